"""neurostimd: a closed-loop neural stimulation controller. Research software, not a medical device."""

__version__ = "0.1.0"
