#!/usr/bin/env python3
"""``make demo``: one stack's whole life as the Prefect flow ``stack-lifecycle``, on the embedded defaults.

A fresh localnet with 90-second epochs (``data/demo-localnet``), Prefect's ephemeral API (its database under
``data/prefect``), and the CPU engine. The flow mints test USDC, creates a Sampling Consensus task with the
attestation lottery at 1000‰ (so an attestation really happens), registers and subscribes three nodes, buys a stack,
serves the sample workload (22 requests), try-settles, lets the node the contract drew replay the stack and attest,
waits out the dispute window, claims, and syncs the ledger.

The contract draws the attester *with replacement among all eligible nodes, the stack's own node included*
(atoma-protocol.md §4.10). The localnet's random stream is seeded: with seed 7 the stack goes to node-3 and node-2
is drawn to attest, so a second node really replays the stack. Another seed may draw the serving node itself.

    .venv/bin/python scripts/demo.py [--home DIR] [--seed N] [--epoch-s S]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quiet_prefect(prefect_home: Path) -> None:
    """Prefect settings for a demo (set before import): its own home under data/, no analytics; the runs' INFO logs
    go to the API (the UI shows each stage's facts) while the console shows warnings only. (Importing ``flows``
    gives Prefect's ephemeral API a start-up timeout fit for a loaded machine: flows/_ephemeral.py.)"""
    os.environ.setdefault("PREFECT_HOME", str(prefect_home))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF loader's progress bar
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path("data/demo-localnet"), help="localnet home (replaced)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the localnet's random stream")
    parser.add_argument("--epoch-s", type=float, default=90.0, help="epoch length in seconds (the replay must fit in two)")
    parser.add_argument("--workload", default="data/workloads/sample.jsonl")
    opts = parser.parse_args(argv)
    os.chdir(ROOT)
    quiet_prefect(ROOT / "data" / "prefect")

    from rich.console import Console
    from rich.markdown import Markdown
    from rich.table import Table

    from atoma_ops.home import LocalnetHome
    from blocks import AtomaNetwork
    from flows import stack_lifecycle
    from flows.lifecycle import summary_markdown

    console = Console()
    localnet, _ = LocalnetHome(opts.home).init(seed=opts.seed, epoch_duration_ms=int(opts.epoch_s * 1000), force=True)
    localnet.close()
    console.print(f"[bold]atoma-ops demo[/]: fresh localnet in {opts.home} ({opts.epoch_s:.0f} s epochs, seed {opts.seed})")
    console.print("Running the Prefect flow [bold]stack-lifecycle[/] (the CPU engine loads in about 20 s) …")
    started = time.monotonic()
    network = AtomaNetwork(home=str(opts.home), epoch_poll_s=1.0)
    try:
        summary = asyncio.run(stack_lifecycle(workload=opts.workload, network=network))
    except Exception as exc:  # noqa: BLE001 - the demo's one error message
        console.print(f"[red bold]DEMO FAILED[/]: {type(exc).__name__}: {exc}")
        return 1
    took = time.monotonic() - started

    s = summary
    console.print(Markdown(summary_markdown(s)))

    from atoma_ops.protocol.money import format_usdc

    table = Table(title="Earnings per node (USDC; base units in the ledger)")
    columns = ["node_small_id", "stacks_claimed", "units_claimed", "node_fees", "attester_credits", "total"]
    money = {"node_fees", "attester_credits", "total"}
    for header in ("node", "stacks", "units", "node fees", "attester credits", "total"):
        table.add_column(header, justify="right", no_wrap=True)
    for row in s["earnings"]:
        table.add_row(*(format_usdc(int(row[c])) if c in money and row.get(c) is not None else str(row.get(c, ""))
                        for c in columns))
    console.print(table)
    console.print(f"Ledger: {opts.home / 'ledger.duckdb'}; for the README's ledger commands:")
    console.print(f"  export ATOMA_OPS_HOME={opts.home}", soft_wrap=True)
    console.print("Prefect runs, in the UI at http://127.0.0.1:4200:")
    console.print("  PREFECT_HOME=data/prefect .venv/bin/prefect server start", soft_wrap=True)
    console.print(f"Done in {took:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
