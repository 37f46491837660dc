"""The simulated stimulator board: protocol endpoint, device-side limits, dead-man watchdog, a synthetic signal
generator with a closed-loop plant, and recording playback. Imports only the codec and value types from `drivers`."""
