"""Kubernetes pod identity: owns the pod watch and the IP index; knows nothing of sockets or
files (the registry asks it who is behind an address)."""
