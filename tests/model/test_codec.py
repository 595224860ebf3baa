"""Stored encoding of records: defaults left out, read back whole."""

from __future__ import annotations

import dataclasses
import json

import pytest

from corral.model.codec import dump_json, load_json, to_data
from corral.model.event import Event
from corral.model.instance import Instance, InstanceState
from corral.server.eventfeed import Entry
from corral.testing.factories import make_instance, make_job_run, make_node

RECORDS = [
    make_instance("i-pending"),
    make_instance("i-running", node="n1", state=InstanceState.RUNNING, ports={"http": 20001},
                  port_names=("http",), pid=42, started_at=5.0, restarts=2),
    dataclasses.replace(make_node("n1"), labels={"zone": "a"}),
    make_job_run(),
    Event(topic="instance", key="i1", type="running", time=3.5, message="up",
          payload={"app": "shop", "pid": None}),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_a_stored_record_reads_back_equal(record: object) -> None:
    assert load_json(type(record), dump_json(record)) == record


def test_fields_at_their_default_are_left_out_and_set_ones_kept() -> None:
    pending = json.loads(dump_json(make_instance("i1")))
    assert not {"pid", "node", "ports", "restarts", "health", "started_at"} & set(pending)
    running = make_instance("i2", node="n1", state=InstanceState.RUNNING, pid=7, restarts=1)
    stored = json.loads(dump_json(running))
    assert (stored["node"], stored["state"], stored["pid"], stored["restarts"]) == (
        "n1", "running", 7, 1)
    # what readers outside the store see is still every field
    assert set(to_data(running)) == {f.name for f in dataclasses.fields(Instance)}
    assert len(dump_json(running)) < len(json.dumps(to_data(running)))


def test_stored_bytes_are_deterministic() -> None:
    a = make_instance("i1", ports={"b": 2, "a": 1}, port_names=("b", "a"))
    b = make_instance("i1", ports={"a": 1, "b": 2}, port_names=("b", "a"))
    assert dump_json(a) == dump_json(b)


def test_the_event_feed_shows_an_event_stored_without_its_defaults_whole() -> None:
    raw = dump_json(Event(topic="node", key="n1", type="ready", time=1.0))
    assert b"payload" not in raw and b"message" not in raw
    entry = Entry(17, raw)
    assert entry.data == {"index": 17, "topic": "node", "key": "n1", "type": "ready",
                          "time": 1.0, "message": "", "payload": {}}
    assert json.loads(entry.json) == entry.data

