"""``Cli``: run ``atoma-ops`` in-process (typer's CliRunner) against a tmp_path home, plus JSON helpers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from atoma_ops.cli import app


@dataclass
class Cli:
    """``atoma-ops --home HOME …``; every output is kept so tests can scan all of it (e.g. for key material)."""

    home: Path
    runner: CliRunner = field(default_factory=CliRunner)
    outputs: list[str] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)

    def invoke(self, *args: str, address: str | None = None, json_out: bool = False, home: Path | None = None):
        full = ["--home", str(home or self.home)]
        if address is not None:
            full += ["--address", address]
        if json_out:
            full.append("--json")
        full += [str(a) for a in args]
        result = self.runner.invoke(app, full, env={"ATOMA_OPS_HOME": None})
        self.outputs.append(result.stdout)
        self.outputs.append(result.stderr)
        return result

    def ok(self, *args: str, address: str | None = None) -> Any:
        """Run with --json, expect exit 0 and exactly one JSON document on stdout; return it."""
        result = self.invoke(*args, address=address, json_out=True)
        assert result.exit_code == 0, (args, result.stdout, result.stderr, result.exception)
        return json.loads(result.stdout)

    def fail(self, *args: str, address: str | None = None, code: int = 1) -> dict:
        """Run with --json, expect exit ``code`` and ``{"error": {...}}`` on stdout; return the error object."""
        result = self.invoke(*args, address=address, json_out=True)
        assert result.exit_code == code, (args, result.stdout, result.stderr, result.exception)
        doc = json.loads(result.stdout)
        assert list(doc) == ["error"], doc
        return doc["error"]

    def human(self, *args: str, address: str | None = None, code: int = 0):
        result = self.invoke(*args, address=address)
        assert result.exit_code == code, (args, result.stdout, result.stderr, result.exception)
        return result


def events(tx: dict, name: str) -> list[dict]:
    """parsedJson of every event ``name`` in a transaction's JSON."""
    return [e["parsedJson"] for e in tx["events"] if e["type"].endswith(f"::db::{name}")]


def event(tx: dict, name: str) -> dict:
    found = events(tx, name)
    assert len(found) == 1, (name, tx["events"])
    return found[0]


def sid(value: dict) -> int:
    """A small id in Sui's parsed JSON: ``{"inner": "3"}`` -> 3."""
    return int(value["inner"])


def balance_changes(tx: dict) -> dict[str, int]:
    return {c["owner"]: int(c["amount"]) for c in tx["balanceChanges"]}


def proof(label: str, size: int = 32) -> str:
    import hashlib

    return "0x" + hashlib.blake2b(label.encode(), digest_size=size).hexdigest()
