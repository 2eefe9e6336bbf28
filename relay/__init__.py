"""plura-relay: a syslog receiver and relay that writes PLURA's ceelog files."""

__version__ = "0.1.0"
