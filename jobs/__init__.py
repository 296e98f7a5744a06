"""Entrypoints for `ray job submit ... -- python -m jobs.X` and `python -m jobs.X`. The library never imports these."""
