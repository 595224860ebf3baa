"""A node's assignments as its agent keeps them: merged from long-poll answers that carry
only what changed (`GET /v1/nodes/{name}/instances?changes=true`).

Nomad's clients do the same (`Node.GetClientAllocs` answers alloc ids and modify indexes,
then the client fetches only the changed allocs): a node holding 100 instances would
otherwise be sent, and decode, all 100 records on every change to any one of them.

An answer with `changes=true` holds:
- `index`: what to ask from next;
- `since`: the revision the changes are counted from; 0 when the answer is the whole list
  (a first poll, or an index the server does not know, as after its store was replaced);
- `ids`: every live instance of the node, in order;
- `instances`: the records of those changed after `since` (all of them when `since` is 0).

An answer without `ids` is from a server that does not know `changes`: the whole list.

Neighbours: `server/api/nodes.py` (the endpoint), `agent/agent.py` and
`testing/hollow.py` (the two callers).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

__all__ = ["merge_assignments"]

T = TypeVar("T")


def merge_assignments(known: Mapping[str, T], answer: Mapping[str, Any],
                      parse: Callable[[Mapping[str, Any]], T]) -> tuple[dict[str, T], bool]:
    """The node's live instances after `answer` (id -> parsed record, in the server's
    order), and whether they are complete. Incomplete (an id listed whose record was
    never sent) means this cache and the server disagree: ask again from index 0."""
    changed = {str(data["id"]): parse(data) for data in answer["instances"]}
    ids = answer.get("ids")
    if ids is None:
        return changed, True
    base = known if answer.get("since", 0) else {}
    merged: dict[str, T] = {}
    complete = True
    for iid in ids:
        record = changed.get(iid, base.get(iid))
        if record is None:
            complete = False
        else:
            merged[iid] = record
    return merged, complete
