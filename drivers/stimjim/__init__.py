"""The Open Ephys StimJim (Teensy 3.5 firmware and its RP2354B rewrite): its text-line codec and its driver."""
