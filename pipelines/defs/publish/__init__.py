"""Publish domain: the analysts' read-only snapshot, written at the end of every warehouse job."""
