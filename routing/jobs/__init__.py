"""Async image jobs: `Prefer: respond-async` on an image POST answers 202 with a job that a
worker runs through the same pipeline as a synchronous call (docs/jobs.md)."""
