"""plura-relay load test: generator, verifier, driver (see README.md; python -m loadtest --help)."""
