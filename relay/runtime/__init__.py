"""Building it all from Config: one process (server), or a supervisor with worker processes
(workers), what both share (common: signals, registry, health), and the entry point (start).
The only package that imports every stage; nothing outside cli imports it."""
