"""Differential tests: plura-relay against a real rsyslogd."""
