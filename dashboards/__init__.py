"""Grafana dashboards as code: the Python source beside the JSON it generates (``scripts/generate.py``)."""
