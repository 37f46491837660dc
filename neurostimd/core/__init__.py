"""The pure core: every step here takes time as an argument and does no I/O."""
