"""Sends the node's status reports to the server, in order and in batches, retrying while
the server is unreachable, so an agent never blocks its instances on the control plane.

One `NodeReporter` per agent queues every instance's reports and sends what has queued
in one request (`PUT /v1/nodes/{name}/status`, applied by the server in order and in one
store transaction): a hundred instances starting at once cost a few requests, not three
hundred. Each runner holds a `StatusReporter`, its instance's view of the queue.

Reports are a queue, not "latest wins": the server checks every transition against the
state machine, and skipping one (say `exited` between two `running`) could make the next
look invalid. A report the server refuses (an impossible transition, an instance no longer
this node's) is logged and dropped: the server's view wins, and the next report carries
the current truth. A whole batch is sent again, after a pause that doubles up to 5 s,
while the server is unreachable, answers 5xx, or answers 409 (its instances kept changing
under the batch); a batch it refuses whole (4xx) is logged and dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from typing import Any

from corral.client.http import ApiError, Client, Unreachable

__all__ = ["NodeReporter", "StatusReporter"]

log = logging.getLogger(__name__)

BATCH = 500  # reports per request at most


class NodeReporter:
    def __init__(self, client: Client, node: str) -> None:
        self._client = client
        self._node = node
        self._queue: deque[tuple[str, dict[str, Any]]] = deque()
        self._queued: Counter[str] = Counter()  # reports not yet delivered, per instance
        self._wake = asyncio.Event()
        self._sent = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    def instance(self, instance_id: str) -> StatusReporter:
        return StatusReporter(self, instance_id)

    def report(self, instance_id: str, status: dict[str, Any]) -> None:
        self._queue.append((instance_id, status))
        self._queued[instance_id] += 1
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"reports-{self._node}")

    def pending(self, instance_id: str | None = None) -> int:
        """Reports queued or in flight (of one instance, or of all)."""
        if instance_id is None:
            return sum(self._queued.values())
        return self._queued[instance_id]

    async def flush(self, instance_id: str | None = None, timeout: float = 10.0) -> None:
        """Wait until the reports queued so far (of one instance, or all) were sent or
        dropped, or `timeout`."""
        try:
            async with asyncio.timeout(timeout), self._sent:
                await self._sent.wait_for(lambda: self.pending(instance_id) == 0)
        except TimeoutError:
            log.warning("%s: %d status reports not yet delivered",
                        f"instance {instance_id}" if instance_id else f"node {self._node}",
                        self.pending(instance_id))

    def drop(self, instance_id: str) -> None:
        """Forget the instance's reports not yet sent (one in flight still goes)."""
        kept = [(iid, s) for iid, s in self._queue if iid != instance_id]
        removed = len(self._queue) - len(kept)
        self._queue = deque(kept)
        self._done(instance_id, removed)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _done(self, instance_id: str, count: int) -> None:
        self._queued[instance_id] -= count
        if self._queued[instance_id] <= 0:
            del self._queued[instance_id]

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
                try:
                    await self._deliver(batch)
                except Exception:  # a bug must not stop every later report
                    log.exception("node %s: %d status reports lost", self._node, len(batch))
                finally:
                    for iid, _ in batch:
                        self._done(iid, 1)
                    async with self._sent:
                        self._sent.notify_all()

    async def _deliver(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        reports = [{"id": iid, **status} for iid, status in batch]
        delay = 0.2
        while True:
            try:
                answer = await self._client.report_statuses(self._node, reports)
                break
            except Unreachable:
                pass
            except ApiError as exc:
                if exc.status < 500 and exc.status != 409:
                    log.warning("node %s: server refused %d status reports: %s", self._node,
                                len(reports), exc.message)
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        for report, result in zip(reports, answer.get("results", ()), strict=False):
            if "error" in result:
                log.warning("instance %s: server refused status %s: %s", report["id"],
                            report.get("state"), result["error"])


class StatusReporter:
    """One instance's reports, through its node's reporter."""

    def __init__(self, node: NodeReporter, instance_id: str) -> None:
        self._node = node
        self._id = instance_id

    def report(self, **status: Any) -> None:
        self._node.report(self._id, status)

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until every report of this instance queued so far was sent (or `timeout`)."""
        await self._node.flush(self._id, timeout)

    async def close(self) -> None:
        """Forget this instance's reports not yet sent."""
        self._node.drop(self._id)
