"""A simulated Sanworks Pulse Pal (firmware 21 and 22): the firmware model (device.py) and its pty process."""
