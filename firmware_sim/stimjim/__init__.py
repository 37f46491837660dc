"""A simulated Open Ephys StimJim: the firmware's logic (`device`) and the process behind a pty (`__main__`)."""
