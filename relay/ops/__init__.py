"""Operating the server: metrics and health over HTTP, the status command, the server's own logs.
Reads counters the other stages expose; never changes what they do."""
