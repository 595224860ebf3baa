"""Merging a node's long-poll answers that carry only what changed."""

from __future__ import annotations

from typing import Any

from corral.client.assignments import merge_assignments


def rec(iid: str, state: str = "scheduled") -> dict[str, Any]:
    return {"id": iid, "state": state}


def merge(known: dict[str, Any], answer: dict[str, Any]) -> tuple[list[Any], bool]:
    held, complete = merge_assignments(known, answer, lambda data: data)
    return list(held.values()), complete


def test_a_whole_answer_replaces_what_was_known() -> None:
    known = {"old": rec("old")}
    answer = {"index": 5, "since": 0, "ids": ["a", "b"], "instances": [rec("a"), rec("b")]}
    assert merge(known, answer) == ([rec("a"), rec("b")], True)


def test_changes_are_merged_in_the_servers_order_and_what_left_is_dropped() -> None:
    known = {"a": rec("a"), "b": rec("b"), "c": rec("c")}
    answer = {"index": 9, "since": 5, "ids": ["a", "c", "d"],
              "instances": [rec("c", "running"), rec("d")]}
    assert merge(known, answer) == ([rec("a"), rec("c", "running"), rec("d")], True)


def test_an_answer_from_a_server_that_sends_everything_is_taken_whole() -> None:
    known = {"a": rec("a")}
    answer = {"index": 9, "instances": [rec("b", "running")]}
    assert merge(known, answer) == ([rec("b", "running")], True)


def test_an_id_whose_record_was_never_sent_makes_the_view_incomplete() -> None:
    answer = {"index": 9, "since": 5, "ids": ["a", "z"], "instances": []}
    assert merge({"a": rec("a")}, answer) == ([rec("a")], False)


def test_records_are_parsed_once_each() -> None:
    parsed: list[str] = []

    def parse(data: Any) -> str:
        parsed.append(data["id"])
        return str(data["state"])

    held, complete = merge_assignments({"a": "scheduled"}, {
        "index": 3, "since": 2, "ids": ["a", "b"], "instances": [rec("b", "starting")]}, parse)
    assert (held, complete, parsed) == ({"a": "scheduled", "b": "starting"}, True, ["b"])
