"""What flows return, in a module every host can import.

A worker loads a flow from its file (``flows/settlement.py`` as the module ``settlement``), so a class defined in
the flow file is pickled under that name and its persisted result could only be read back where ``settlement``
imports. Return types live here, under a stable package name, so a result in shared result storage can be read by
any host (or a test) that has atoma-ops installed.
"""

from __future__ import annotations

from collections.abc import Sequence


class ActionLog(Sequence):
    """The rows of what a run did. Deliberately not a ``list``: Prefect walks a flow's list and dict return values
    looking for futures, which costs ~0.2 ms a row — most of a large run's overhead (thousands of rows)."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __getitem__(self, index):  # type: ignore[override]
        return self.rows[index]

    def __len__(self) -> int:
        return len(self.rows)

    def __eq__(self, other: object) -> bool:
        return list(self.rows) == list(other) if isinstance(other, (list, tuple, ActionLog)) else NotImplemented

    def __repr__(self) -> str:
        return f"ActionLog({self.rows!r})"
