"""A process for the template end-to-end tests: appends `START`, then each SIGHUP and the
SIGTERM it gets (name and time.time()), to `signals.log` in its working directory (the task
dir), and exits on SIGTERM."""

import signal
import sys
import time

log = open("signals.log", "a", buffering=1)  # noqa: SIM115 - open for the process's life


def record(sig: int, frame: object) -> None:
    log.write(f"{signal.Signals(sig).name} {time.time():.6f}\n")
    if sig == signal.SIGTERM:
        sys.exit(0)


signal.signal(signal.SIGHUP, record)
signal.signal(signal.SIGTERM, record)
log.write(f"START {time.time():.6f}\n")
while True:
    signal.pause()
