"""Sends one instance's status reports to the server in order, retrying while the server
is unreachable, so an agent never blocks its instances on the control plane.

Reports are a queue, not "latest wins": the server checks every transition against the
state machine, and skipping one (say `exited` between two `running`) could make the next
look invalid. A report the server refuses (4xx) is logged and dropped: the server's view
wins, and the next report carries the current truth.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from corral.client.http import ApiError, Client, Unreachable

__all__ = ["StatusReporter"]

log = logging.getLogger(__name__)

_reporters: set[asyncio.Task[None]] = set()


class StatusReporter:
    def __init__(self, client: Client, node: str, instance_id: str) -> None:
        self._client = client
        self._node = node
        self._id = instance_id
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name=f"report-{instance_id}")
        # asyncio keeps only weak references to tasks: without this, a reporter whose
        # runner has finished could be collected with reports still queued.
        _reporters.add(self._task)
        self._task.add_done_callback(_reporters.discard)

    def report(self, **status: Any) -> None:
        status["node"] = self._node
        self._queue.put_nowait(status)

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until every queued report was sent (or `timeout`)."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            log.warning("instance %s: %d status reports not yet delivered", self._id,
                        self._queue.qsize())

    def finish(self) -> None:
        """No more reports will come: deliver what is queued, then end (in the background,
        however long the server stays unreachable)."""
        self._queue.put_nowait(None)

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            status = await self._queue.get()
            if status is None:
                self._queue.task_done()
                return
            delay = 0.2
            try:
                while True:
                    try:
                        await self._client.report_status(self._id, status)
                        break
                    except Unreachable:
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 5.0)
                    except ApiError as exc:
                        if exc.status >= 500:
                            await asyncio.sleep(delay)
                            delay = min(delay * 2, 5.0)
                            continue
                        log.warning("instance %s: server refused status %s: %s", self._id,
                                    status.get("state"), exc.message)
                        break
            finally:
                self._queue.task_done()
