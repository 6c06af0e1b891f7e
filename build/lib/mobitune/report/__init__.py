"""What a finished sweep shows: its results table, figures and markdown report, and the lab report's numbers beside
them (one sweep, or pooled over sweep folders into a document). Reads sweep folders; imports nothing that runs
a sweep."""
