"""``plot``: earnings per epoch and node as a stacked bar chart (PNG), with matplotlib when it is installed."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..protocol.constants import ONE_USDC
from .store import LedgerError

MATPLOTLIB_PIN = "matplotlib==3.11.2"


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_earnings(by_epoch_node: pd.DataFrame, out: str | os.PathLike) -> Path:
    """Stacked bars: x = epoch, one colour per node, height = node fees + attester credits (USDC).

    Raises:
        LedgerError: matplotlib is not installed (it is not a dependency of atoma-ops yet).
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        raise LedgerError(
            f"`plot` needs matplotlib, which is not installed in this environment: `pip install {MATPLOTLIB_PIN}` "
            "(or export the data with `atoma-ops ledger export --parquet DIR` and chart it elsewhere)"
        ) from None
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if len(by_epoch_node) == 0:
        ax.text(0.5, 0.5, "no claims yet", ha="center", va="center", transform=ax.transAxes)
    else:
        table = (
            by_epoch_node.assign(usdc=by_epoch_node["total"].astype("int64") / ONE_USDC)
            .pivot_table(index="epoch", columns="node_small_id", values="usdc", aggfunc="sum", fill_value=0)
            .sort_index()
        )
        bottom = None
        epochs = [str(e) for e in table.index]
        for node in table.columns:
            values = table[node].to_numpy()
            ax.bar(epochs, values, bottom=bottom, label=f"node {node}")
            bottom = values if bottom is None else bottom + values
        ax.legend(title="node", fontsize="small")
    ax.set_xlabel("epoch (claimed in)")
    ax.set_ylabel("earned (USDC): node fees + attester credits")
    ax.set_title("Earnings per epoch and node")
    fig.tight_layout()
    import tempfile

    # written under a temporary name and renamed into place when complete: never half a PNG under ``out``
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png")
        os.replace(name, out)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return out
