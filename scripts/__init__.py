"""Developer scripts (``generate.py``); importable so tests can check the generated files."""
