"""Batch and scheduled jobs: the pure decisions behind Corral's cron (no store, no clock).

`schedule.py` parses and evaluates schedules (cron and ISO 8601 repeating intervals),
`cron.py` decides what the cron controller does for one job at `now`, `dag.py` decides which
jobs their parents (`after:`) trigger and renders the graph. The records they read and
produce are in `model/job.py`. Nothing here imports the server, so `spec/` can share the
parsers; import the submodules directly (this package imports nothing on purpose).
"""
