"""The Sanworks Pulse Pal (2 and 3, firmware 21 and 22): an I/O-free codec and a driver over a ByteLink."""
