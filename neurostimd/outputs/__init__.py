"""Where the loop's results go: audit log, recorder, LSL decisions, metrics, state file."""
