"""Effect: the session's processes — a cgroup that openvpn and all it forks live in.

Journaled before the cgroup exists and before openvpn is spawned into it, so there is
no moment at which a crash of the service leaves a process it cannot find
(``ports.ProcessGroups``; Linux: ``linux/cgroup.py``).  Undo: ``cgroup.kill`` first
(``end``, before any other undo, so nothing of the session runs while its network state
goes), then, newest first like every record, wait until it is empty and remove it
(``undo``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from iservice.effects._records import text
from iservice.errors import JournalDataError
from iservice.ports import ProcessGroups


@dataclass(frozen=True)
class CgroupRecord:
    KIND: ClassVar[str] = "cgroup"
    path: str

    def to_data(self) -> dict[str, Any]:
        return {"path": self.path}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> CgroupRecord:
        path = text(d, "path")
        if not path.startswith("/"):
            raise JournalDataError(f"journal record: cgroup path {path!r} is not absolute")
        return cls(path)


def end(cgroups: ProcessGroups, rec: CgroupRecord) -> bool:
    """SIGKILL every process of the session; False if the cgroup is gone."""
    return cgroups.kill(rec.path)


def undo(cgroups: ProcessGroups, rec: CgroupRecord) -> None:
    """Raises OSError (the record stays) while a process is left."""
    cgroups.remove(rec.path)
