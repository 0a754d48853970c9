"""Metrics, logs and the HTTP endpoints ops look at."""
