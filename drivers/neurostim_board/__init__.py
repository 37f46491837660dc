"""neurostimd's own board: its codec (protocol v2) and its serial driver."""
