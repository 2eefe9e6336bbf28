"""Message -> line -> file: the ceelog template, the routes ([[route]]) and the file sink.
Knows nothing of sockets; the file sink knows nothing of syslog (it appends lines to names)."""
