#!/usr/bin/env python3
"""A scripted walk through one stack's life on the embedded localnet, driven through the real ``atoma-ops`` CLI.

``make demo`` runs this. Every step prints the command it runs, then that command's output; the script checks the
outcome of each step (including one abort that is *expected*) and the final balances against the protocol's money
math (atoma-protocol.md §6, worked example 1), and exits non-zero as soon as anything deviates.

    .venv/bin/python scripts/demo_cli.py [--home DIR] [--seed N]

The default home is ``data/demo-localnet`` (git-ignored), replaced on every run (``localnet init --force``) and left
in place afterwards so it can be explored, e.g. ``atoma-ops --home data/demo-localnet db list-events``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The walk's numbers: price 1 USDC per 1M compute units, 1M units bought, 400k served.
MINTED = 5_000_000
PRICE = 1_000_000  # USDC base units per one million compute units (buyer's bid and node's ask)
UNITS = 1_000_000
CLAIMED = 400_000
PAID = PRICE * UNITS // 1_000_000  # NoSecurity task: floor(price × units / 1e6) = 1_000_000
NODE_FEE = CLAIMED * PRICE // 1_000_000  # 400_000
REFUND = (UNITS - CLAIMED) * PRICE // 1_000_000  # 600_000


class DemoFailed(Exception):
    pass


def cli_command() -> list[str]:
    """The real console script installed beside this interpreter."""
    script = Path(sys.executable).parent / "atoma-ops"
    if not script.exists():
        raise DemoFailed(f"{script} not found: install the project first (`make venv`)")
    return [str(script)]


class Demo:
    def __init__(self, home: Path):
        self.home = home
        self.cmd = cli_command()
        self.env = dict(os.environ)
        self.env.pop("ATOMA_OPS_HOME", None)
        if sys.stdout.isatty():
            self.env.setdefault("FORCE_COLOR", "1")
        self.step_no = 0

    def step(self, title: str) -> None:
        self.step_no += 1
        print(f"\n\033[1m{self.step_no}. {title}\033[0m" if sys.stdout.isatty() else f"\n{self.step_no}. {title}")

    def run(self, *args: str, address: str | None = None, json_out: bool = False, expect_rc: int = 0):
        """Run ``atoma-ops --home HOME [--address A] [--json] ARGS``, print it and its output, check the exit code."""
        full = ["--home", str(self.home)]
        if address:
            full += ["--address", address]
        if json_out:
            full.append("--json")
        full += list(args)
        print("$ " + shlex.join(["atoma-ops", *full]), flush=True)
        proc = subprocess.run([*self.cmd, *full], capture_output=True, text=True, env=self.env, cwd=ROOT)
        if proc.stdout:
            print(proc.stdout, end="" if proc.stdout.endswith("\n") else "\n")
        if proc.stderr:
            print(proc.stderr, end="" if proc.stderr.endswith("\n") else "\n", file=sys.stdout)
        sys.stdout.flush()
        if proc.returncode != expect_rc:
            raise DemoFailed(f"`atoma-ops {' '.join(args)}` exited {proc.returncode}, expected {expect_rc}")
        if json_out:
            try:
                return json.loads(proc.stdout)
            except json.JSONDecodeError as exc:
                raise DemoFailed(f"`atoma-ops {' '.join(args)}` did not print one JSON document: {exc}") from None
        return proc

    @staticmethod
    def check(condition: bool, what: str) -> None:
        if not condition:
            raise DemoFailed(what)
        print(f"   ok: {what}")


def walkthrough(home: Path, seed: int) -> None:
    d = Demo(home)

    d.step("Publish a fresh localnet and write a wallet (admin, user, node-1..3)")
    d.run("localnet", "init", "--seed", str(seed), "--force")

    d.step(f"Mint {MINTED / 1e6:.6f} test USDC to the user (the localnet's stand-in for Circle's faucet)")
    d.run("usdc", "mint", "--amount", str(MINTED), "--to", "user")

    d.step("The admin creates a task (holds the AtomaManagerBadge; the active address after init)")
    d.run("db", "create-task-entry", "--role", "0", "--model-name", "HuggingFaceTB/SmolLM2-135M-Instruct")
    task = 1  # small ids start at 1 on a fresh localnet
    info = d.run("db", "get-task", "--task-small-id", str(task), json_out=True)
    d.check(
        info["role"] == 0 and info["is_public"] and not info["is_deprecated"],
        f"task {task} exists: role 0 (chat completion), public, not deprecated",
    )

    d.step("node-1 registers and subscribes to the task, asking 1 USDC per 1M compute units")
    d.run("db", "register-node", address="node-1")
    d.run(
        "db", "subscribe-node-to-task", "--task-small-id", str(task),
        "--price-per-one-million-compute-units", str(PRICE), address="node-1",
    )

    d.step("The user's balance before buying")
    bal = d.run("usdc", "balance", "user", json_out=True)
    d.check(bal["base_units"] == MINTED, f"user holds {bal['usdc']} USDC")

    d.step(f"The user buys a stack of {UNITS} compute units, bidding {PRICE} per 1M (pays {PAID})")
    d.run(
        "db", "acquire-new-stack-entry", "--task-small-id", str(task), "--num-compute-units", str(UNITS),
        "--price", str(PRICE), address="user",
    )

    d.step("Read the stack back (JSON)")
    stack = d.run("db", "get-stack", "--stack-small-id", "1", json_out=True)
    user_address = bal["address"]
    d.check(stack["owner"] == user_address, "stack 1 is owned by the user")
    d.check(stack["selected_node_id"] == 1, "stack 1 was given to node 1 (the only subscriber)")
    d.check(stack["num_compute_units"] == UNITS and not stack["is_claimed"], f"{UNITS} units, not claimed")

    d.step(f"node-1 served {CLAIMED} compute units and settles the stack")
    # Any 32 bytes pass the contract's length checks. The real commitment (the node's Merkle root over the stack's
    # requests and responses) arrives with the serving issue; until then a blake2b-256 of a label stands in.
    proof = "0x" + hashlib.blake2b(b"atoma-ops demo: stack 1 served output", digest_size=32).hexdigest()
    leaf = "0x" + hashlib.blake2b(b"atoma-ops demo: stack 1 merkle leaf", digest_size=32).hexdigest()
    d.run(
        "db", "try-settle-stack", "--stack-small-id", "1", "--num-claimed-compute-units", str(CLAIMED),
        "--committed-stack-proof", proof, "--stack-merkle-leaf", leaf, address="node-1",
    )

    d.step("Claiming right away is refused: the dispute window lasts until the next epoch (expected abort)")
    proc = d.run("db", "claim-funds", "--settled-ticket-ids", "1", address="node-1", expect_rc=1)
    d.check(
        "EStackDisputePeriodIsNotOver" in proc.stderr and "312012032" in proc.stderr,
        "claim-funds aborted with EStackDisputePeriodIsNotOver (312012032)",
    )

    d.step("One epoch passes (about 24 h on Sui)")
    d.run("localnet", "advance-epoch")

    d.step("node-1 claims: it is paid for the units it served, the user is refunded the rest")
    d.run("db", "claim-funds", "--settled-ticket-ids", "1", address="node-1")

    d.step("Final balances")
    user = d.run("usdc", "balance", "user", json_out=True)
    node = d.run("usdc", "balance", "node-1", json_out=True)
    d.check(
        user["base_units"] == MINTED - PAID + REFUND,
        f"user: {MINTED} minted − {PAID} paid + {REFUND} refunded = {user['base_units']}",
    )
    d.check(node["base_units"] == NODE_FEE, f"node-1: {CLAIMED} units × {PRICE} / 1M = {node['base_units']}")
    status = d.run("localnet", "status")
    d.check(" conserved" in status.stdout and "NOT conserved" not in status.stdout, "every minted USDC unit is accounted for")
    print(f"\nDemo complete. Explore further: atoma-ops --home {home} db list-events")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=ROOT / "data" / "demo-localnet", help="localnet home (replaced)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the localnet's random stream")
    opts = parser.parse_args(argv)
    home = opts.home.absolute()
    try:  # show paths relative to the repository when they are inside it
        home = home.relative_to(ROOT)
    except ValueError:
        pass
    try:
        walkthrough(home, opts.seed)
    except DemoFailed as exc:
        print(f"\nDEMO FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
