"""Parsing and checking command-line values before anything is opened: hex bytes, integer lists, object ids, the
badge a command acts with."""

from __future__ import annotations

import re
from typing import List, Optional

import typer

from .errors import CliInputError


# --------------------------------------------------------------------------------------------------- input parsing
_HEX_RE = re.compile(r"^[0-9a-fA-F]*$")


def parse_hex(flag: str, text: str) -> bytes:
    """``0x``-prefixed hex -> bytes (the contract checks lengths, not the CLI)."""
    t = text.strip()
    if not t.startswith(("0x", "0X")) or not _HEX_RE.match(t[2:]) or len(t) % 2:
        raise CliInputError(f"{flag}: {text!r} is not 0x-prefixed hex bytes (e.g. 0x{'ab' * 32})")
    return bytes.fromhex(t[2:])


def parse_ints(flag: str, values: Optional[List[str]]) -> list[int]:
    """Repeated flags and comma lists, in order: ``--x 1 --x 2,3`` -> [1, 2, 3]; empty pieces are dropped."""
    out: list[int] = []
    for value in values or []:
        for piece in value.split(","):
            piece = piece.strip()
            if not piece:
                continue
            try:
                out.append(int(piece))
            except ValueError:
                raise CliInputError(f"{flag}: {piece!r} is not an integer") from None
    return out


def object_id(flag: str, text: Optional[str]) -> Optional[str]:
    """An object id flag: ``0x`` and 1..64 hex digits (None passes: the object is then found among the signer's)."""
    if text is None:
        return None
    t = text.strip()
    if not t.startswith(("0x", "0X")) or not 0 < len(t) - 2 <= 64 or not _HEX_RE.match(t[2:]):
        raise CliInputError(f"{flag}: {text!r} is not an object id (0x and up to 64 hex digits)")
    return t


def node_badge_pick(node_badge: Optional[str], node_small_id: Optional[int]) -> dict:
    if node_badge is not None and node_small_id is not None:
        raise CliInputError("--node-badge and --node-small-id both pick the NodeBadge; give one of them")
    return {"node_badge": object_id("--node-badge", node_badge), "node_small_id": node_small_id}


def task_badge_pick(task_badge: Optional[str], task_small_id: Optional[int]) -> dict:
    if task_badge is not None and task_small_id is not None:
        raise CliInputError("--task-badge and --task-small-id both pick the TaskBadge; give one of them")
    return {"task_badge": object_id("--task-badge", task_badge), "task_small_id": task_small_id}


def kebab(name: str) -> str:
    return name.replace("_", "-")


NODE_BADGE_OPT = typer.Option(None, "--node-badge", metavar="ID", help="NodeBadge object id (default: the signer's only one).")
NODE_SMALL_ID_OPT = typer.Option(None, "--node-small-id", metavar="N", help="Pick the signer's NodeBadge with this node small id.")
MANAGER_BADGE_OPT = typer.Option(None, "--badge", metavar="ID", help="AtomaManagerBadge object id (default: the signer's).")
