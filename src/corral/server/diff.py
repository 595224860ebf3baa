"""What an apply changes, service by service, for `corral apply --plan` and the app event.

Pure: compares two specs, no store access.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from corral.model.application import ApplicationSpec, ServiceSpec
from corral.model.codec import to_data

__all__ = ["ServiceChange", "diff_specs"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceChange:
    kind: str  # "service" or "job"
    name: str
    change: str  # added | removed | updated | scaled | unchanged
    fields: tuple[str, ...] = ()  # changed fields, for "updated"
    instances: tuple[int, int] = (0, 0)  # before, after

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "change": self.change,
                "fields": list(self.fields), "instances": list(self.instances)}


def _changed_fields(old: Any, new: Any) -> tuple[str, ...]:
    a, b = to_data(old), to_data(new)
    return tuple(sorted(f.name for f in fields(old) if a[f.name] != b[f.name]))


def diff_specs(old: ApplicationSpec | None, new: ApplicationSpec) -> list[ServiceChange]:
    changes: list[ServiceChange] = []
    old_services: dict[str, ServiceSpec] = dict(old.services) if old else {}
    for name in sorted(set(old_services) | set(new.services)):
        before, after = old_services.get(name), new.services.get(name)
        if before is None and after is not None:
            changes.append(ServiceChange(kind="service", name=name, change="added",
                                         instances=(0, after.instances)))
        elif after is None and before is not None:
            changes.append(ServiceChange(kind="service", name=name, change="removed",
                                         instances=(before.instances, 0)))
        elif before is not None and after is not None:
            changed = _changed_fields(before, after)
            counts = (before.instances, after.instances)
            if not changed:
                kind = "unchanged"
            elif changed == ("instances",):
                kind = "scaled"
            else:
                kind = "updated"
            changes.append(ServiceChange(kind="service", name=name, change=kind,
                                         fields=tuple(f for f in changed if f != "instances"),
                                         instances=counts))
    old_jobs = dict(old.jobs) if old else {}
    for name in sorted(set(old_jobs) | set(new.jobs)):
        jb, ja = old_jobs.get(name), new.jobs.get(name)
        if jb is None:
            change, changed = "added", ()
        elif ja is None:
            change, changed = "removed", ()
        else:
            changed = _changed_fields(jb, ja)
            change = "updated" if changed else "unchanged"
        changes.append(ServiceChange(kind="job", name=name, change=change, fields=changed))
    return changes
