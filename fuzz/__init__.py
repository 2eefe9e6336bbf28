"""Fuzzing plura-relay: atheris harnesses, their seed corpora and the invariants they check."""
