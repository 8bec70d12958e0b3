"""``Ledger``: where chain state, usage and the intent journal are recorded."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect.blocks.core import Block
from pydantic import Field

if TYPE_CHECKING:  # pragma: no cover
    from atoma_ops.ledger.api import Ledger as LedgerFile


class Ledger(Block):
    """The DuckDB ledger: the chain mirror, per-request usage and the intent journal (``chain_actions``)."""

    _block_type_name = "Atoma Ledger"
    _description = "The DuckDB file of the chain mirror, compute-unit usage and the intent journal."

    path: str | None = Field(
        default=None, description="The DuckDB file (default: `<network home>/ledger.duckdb`)."
    )
    lock_timeout_s: float = Field(
        default=60.0, gt=0, description="How long a write waits for another process holding the file."
    )

    def open(self, default_home: str | None = None) -> "LedgerFile":
        """The ledger (each call on it opens and closes the file: one unit of work)."""
        from atoma_ops.ledger.api import Ledger as LedgerFile
        from atoma_ops.ledger.api import default_path

        return LedgerFile(self.path or default_path(default_home), lock_timeout_s=self.lock_timeout_s)
