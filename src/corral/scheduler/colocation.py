"""Where the instances of each service are, while one batch is decided: per node, for
`distinct_hosts`, and per value of a node attribute, for `spread`.

`Colocation` is built from the snapshot in one pass over its instances, then kept current by
`record` after every placement of the batch, so a rule never looks at instances again: the
cost of a request stays in the number of nodes. Per-value counts for a spread attribute are
derived from the per-node counts the first time a request asks for them, then updated too.

Which instances count: those that are wanted and not ended (`Instance.live`) on a node in the
snapshot, except one being migrated off a draining node. It still runs, but its replacement is
what this batch places, and counting both would push the replacement away from the zone the
old one is leaving, leaving the spread uneven once the old one stops. Nomad likewise leaves
out allocations whose plan stops them.

Neighbours: `schedule.py` builds and updates it; `model/constraints.py` resolves attribute names.
"""

from __future__ import annotations

from collections.abc import Mapping

from corral.model.constraints import parse_attribute
from corral.model.instance import Instance
from corral.model.node import Node
from corral.scheduler.snapshot import Snapshot

__all__ = ["Colocation", "ServiceKey", "counts_for_placement"]

ServiceKey = tuple[str, str, str]  # namespace, app, service

_NONE: Mapping[str, int] = {}


def counts_for_placement(instance: Instance) -> bool:
    return instance.node is not None and instance.live and not instance.migrate


class Colocation:
    """Instance counts per service, per node and per attribute value. Scratch state private
    to one `schedule` call, mutated as the batch places instances."""

    def __init__(self, snapshot: Snapshot) -> None:
        # A name listed twice keeps its last record, as in `snapshot.build_budgets`.
        self._nodes = {node.name: node for node in snapshot.nodes}
        self._on_node: dict[ServiceKey, dict[str, int]] = {}
        if snapshot.placed is not None:
            for key, counts in snapshot.placed.items():
                self._on_node[key] = {name: n for name, n in counts.items()
                                      if name in self._nodes}
        for instance in () if snapshot.placed is not None else snapshot.instances:
            if counts_for_placement(instance) and instance.node in self._nodes:
                per_node = self._on_node.setdefault(
                    (instance.namespace, instance.app, instance.service), {})
                name = instance.node or ""
                per_node[name] = per_node.get(name, 0) + 1
        # service -> spread attribute -> value -> instances; filled on first use.
        self._per_value: dict[ServiceKey, dict[str, dict[str, int]]] = {}
        # spread attribute -> node name -> value ("" when the node has none).
        self._values: dict[str, dict[str, str]] = {}

    def on_node(self, key: ServiceKey) -> Mapping[str, int]:
        """Node name -> instances of the service there; nodes without any are absent."""
        return self._on_node.get(key, _NONE)

    def values(self, attribute: str) -> Mapping[str, str]:
        """Node name -> the node's value of a spread attribute. A node without it counts as
        the value "", so unlabelled nodes share one bucket rather than each being its own."""
        values = self._values.get(attribute)
        if values is None:
            target = parse_attribute(attribute)
            values = self._values[attribute] = {
                name: target.lookup(node) or "" for name, node in self._nodes.items()}
        return values

    def per_value(self, key: ServiceKey, attribute: str) -> Mapping[str, int]:
        """Attribute value -> instances of the service on nodes with that value."""
        by_attribute = self._per_value.setdefault(key, {})
        counts = by_attribute.get(attribute)
        if counts is None:
            values = self.values(attribute)
            counts = by_attribute[attribute] = {}
            for name, count in self.on_node(key).items():
                counts[values[name]] = counts.get(values[name], 0) + count
        return counts

    def record(self, key: ServiceKey, node: Node) -> None:
        """Count one more instance of the service on `node`, placed by this batch."""
        per_node = self._on_node.setdefault(key, {})
        per_node[node.name] = per_node.get(node.name, 0) + 1
        for attribute, counts in self._per_value.get(key, {}).items():
            value = self._values[attribute][node.name]
            counts[value] = counts.get(value, 0) + 1
