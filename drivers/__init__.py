"""The stimulator library: the Driver ABC and the value types (`base`, `types`), byte links (`transport`), errors,
and one folder per device protocol (`neurostim_board/`). Imports nothing of the host (neurostimd) or the simulator.

Importing this package loads nothing: import the module you need (`neurostimd.drivers.types` needs numpy only)."""
