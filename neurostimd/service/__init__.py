"""Running as a service: the daemon, systemd notification, logging, exit codes."""
