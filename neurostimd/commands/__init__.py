"""The command line: each subcommand and the programs behind it."""
