"""Load: concurrent lifecycle flows on one localnet, and concurrent chat requests against the node's HTTP server.

    .venv/bin/python bench/load.py                        # 8 flows, 1,000 requests over 4 stacks
    .venv/bin/python bench/load.py --flows 3 --requests 200 --only http

Prints throughput (flows per minute, requests per second) and p50/p99 latency (per flow, per request), the sizes
used and every invariant check (reliability/load.py); writes data/reliability/load.json and load.md (the section
"## 3. Load" of docs/reliability.md). Exit status 0 iff every invariant holds; timings are printed, never judged.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

# Prefect reads its settings when imported: a private home, quiet logs, no telemetry.
_PREFECT_HOME = tempfile.mkdtemp(prefix="atoma-load-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
# the ephemeral API server gets 20 s to start by default: too few on a loaded 2-core box
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

ROOT = Path(__file__).resolve().parent.parent

import argparse  # noqa: E402
import asyncio  # noqa: E402
import shutil  # noqa: E402

from reliability.load import flow_load, http_load, write_results  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=8, help="concurrent stack_lifecycle runs (default 8)")
    parser.add_argument("--requests-per-flow", type=int, default=2, help="chat requests in each flow's workload")
    parser.add_argument("--requests", type=int, default=1000, help="concurrent chat requests (default 1,000)")
    parser.add_argument("--stacks", type=int, default=4, help="stacks the requests are spread over (default 4)")
    parser.add_argument("--served-fraction", type=float, default=0.3,
                        help="the share of the requests the stacks' units cover (the rest must be refused)")
    parser.add_argument("--max-tokens", type=int, default=2, help="max_tokens of every chat request (default 2)")
    parser.add_argument("--only", choices=("flows", "http"), help="run one load only")
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "reliability", help="where load.json/.md go")
    parser.add_argument("--dir", type=Path, default=None, help="where the temporary localnets are made")
    opts = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="atoma-load-", dir=opts.dir))

    async def run():
        results = []
        if opts.only in (None, "flows"):
            results.append(await flow_load(work / "flows", flows=opts.flows, requests_per_flow=opts.requests_per_flow,
                                           max_tokens=opts.max_tokens))
        if opts.only in (None, "http"):
            results.append(await http_load(work / "http", requests=opts.requests, stacks=opts.stacks,
                                           max_tokens=opts.max_tokens, served_fraction=opts.served_fraction))
        return results

    try:
        results = asyncio.run(run())
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(_PREFECT_HOME, ignore_errors=True)

    for r in results:
        print(f"\n== {r.load}: {'PASS' if r.ok else 'FAIL'}")
        print("sizes:   " + ", ".join(f"{k}={v}" for k, v in r.sizes.items()))
        print("figures: " + ", ".join(f"{k}={v}" for k, v in r.figures.items() if k != "transactions_by_entry_function"))
        if "transactions_by_entry_function" in r.figures:
            print("chain:   " + ", ".join(f"{k}×{v}" for k, v in r.figures["transactions_by_entry_function"].items()))
        for c in r.checks:
            print(f"  [{'ok' if c.ok else 'FAIL'}] {c.name}" + (f" — {c.detail}" if c.detail else ""))
    json_path, md_path = write_results(results, opts.out)
    ok = bool(results) and all(r.ok for r in results)
    print(f"\nwrote {json_path} and {md_path}: {'every invariant holds' if ok else 'INVARIANTS BROKEN'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
