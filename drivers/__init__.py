"""The stimulator library: the Driver ABC and the value types (`base`, `types`), byte links (`transport`), errors,
and one folder per device protocol (`neurostim_board/`). Imports nothing of the host (neurostimd) or the simulator.

Importing this package loads nothing: import the module you need (`neurostimd.drivers.types` needs numpy only)."""

# The folder is also importable as top-level `drivers` from the project root: refuse that second copy.
if __name__ != "neurostimd.drivers":
    raise ImportError(f"import this package as neurostimd.drivers, not as {__name__!r}: a second copy under "
                      f"another name would have its own classes (an error raised by one copy is not caught as the "
                      f"other's)")
