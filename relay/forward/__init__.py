"""The relay hop: upstream formats and origin stamps, one forward target (spool and sender),
the set of targets, the disk spool and its inspection. Takes what the pipeline offers; never
imports the pipeline, ingest listeners or runtime."""
