"""The simulated stimulator board: protocol endpoint, device-side limits, dead-man watchdog, a synthetic signal
generator with a closed-loop plant, and recording playback. Imports only the codec and value types from `drivers`."""

# The folder is also importable as top-level `firmware_sim` from the project root: refuse that second copy.
if __name__ != "neurostimd.firmware_sim":
    raise ImportError(f"import this package as neurostimd.firmware_sim, not as {__name__!r}: a second copy under "
                      f"another name would have its own classes (an error raised by one copy is not caught as the "
                      f"other's)")
