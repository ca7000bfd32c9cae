"""The REST API: one more door onto the pipeline the dashboard and the CLI use (``python -m pipeline serve``)."""
