"""Readers of the input formats the ingest stage accepts, and their error type."""
