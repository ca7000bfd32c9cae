"""Runs: records, the runner and its background thread, one prompt's job."""
