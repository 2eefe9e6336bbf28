"""Child servers: the registry of sources seen (persisted, listed) and the announcement of new
ones (log line, hook command, hook URL). Knows nothing of sockets or file formats."""
