"""A stack's history: every served request, its response, its units and its hashes, in serving order.

The node appends to it in its store (store.py) in the same SQLite transaction that settles the request's usage.
Attesters get it as one JSONL file per stack (``export_jsonl`` / ``import_jsonl``):

- line 1, the header: ``{"format": "atoma-ops/stack-history", "version": 2, "stack_small_id", "node_small_id",
  "task_small_id", "model", "num_requests", "units", "root"}``;
- then one line per request, in serving order: ``{"index", "request", "response", "units", "usage_units",
  "reserved_units", "payload_hash", "response_hash", "leaf", "served_at_ms", "request_id", "seed", "arrived_ms",
  "first_token_ms"}`` (hashes as ``0x`` hex; ``request`` is the request object whose canonical JSON is the hashed
  payload; ``response`` the full response as returned).

Version 2 added the last four fields, what a replay and the ledger need beyond the hashes: ``seed`` (the seed the
node drew for a sampled request that named none, so a replay samples the same tokens), ``request_id`` (a client's
idempotency key, so a resumed workload skips what was served), and ``arrived_ms`` / ``first_token_ms`` beside
``served_at_ms`` (when the request finished), for latency and time to first token. Version 1 files still import:
their absent fields are None. A response whose client dropped the stream has ``finish_reason`` "abort"
(``FINISH_ABORTED``) and the completion tokens actually produced; a replay is bounded by that count.

Import recomputes every hash and the root and refuses the file at the first mismatch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from ..protocol.commitments import (
    canonical_json,
    canonical_request,
    merkle_root,
    payload_hash,
    request_leaf,
    response_hash,
)
from .engines.base import FINISH_ABORTED

FORMAT = "atoma-ops/stack-history"
VERSION = 2
#: header versions import_jsonl reads (1: before request_id / seed / arrived_ms / first_token_ms)
SUPPORTED_VERSIONS = (1, 2)


class HistoryError(ValueError):
    """A history file or record that does not verify (wrong hash, gap in the indexes, bad header)."""

    kind = "InvalidHistory"


def _hex(b: bytes) -> str:
    return "0x" + b.hex()


def _unhex(value: object, what: str) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise HistoryError(f"{what} must be 0x hex, got {value!r}")
    try:
        out = bytes.fromhex(value[2:])
    except ValueError:
        raise HistoryError(f"{what} is not hex: {value!r}") from None
    if len(out) != 32:
        raise HistoryError(f"{what} must be 32 bytes, got {len(out)}")
    return out


@dataclass(frozen=True)
class HistoryEntry:
    """One served request."""

    index: int
    request: dict
    response: dict
    units: int  # compute units charged to the stack
    usage_units: int  # usage.prompt_tokens + usage.completion_tokens as reported by the engine
    reserved_units: int  # what was reserved before running
    payload_hash: bytes
    response_hash: bytes
    leaf: bytes
    served_at_ms: int = 0  # when the request finished (epoch ms)
    request_id: str | None = None  # the client's idempotency key (e.g. a workload line's id)
    seed: int | None = None  # the seed the node drew for a sampled request without one (replays reuse it)
    arrived_ms: int | None = None  # when the request arrived (epoch ms)
    first_token_ms: int | None = None  # when its first token was produced (epoch ms)

    @classmethod
    def build(
        cls, index: int, request: dict, response: dict, *, units: int, usage_units: int, reserved_units: int,
        served_at_ms: int = 0, request_id: str | None = None, seed: int | None = None, arrived_ms: int | None = None,
        first_token_ms: int | None = None,
    ) -> "HistoryEntry":
        p, r = payload_hash(request), response_hash(response)
        return cls(
            index, request, response, units, usage_units, reserved_units, p, r, request_leaf(p, r), served_at_ms,
            request_id=request_id, seed=seed, arrived_ms=arrived_ms, first_token_ms=first_token_ms,
        )

    @property
    def request_bytes(self) -> bytes:
        return canonical_request(self.request)

    @property
    def response_bytes(self) -> bytes:
        return canonical_json(self.response)

    @property
    def content(self) -> str | None:
        return response_content(self.response)

    @property
    def finish_reason(self) -> str | None:
        try:
            return self.response["choices"][0].get("finish_reason")
        except (KeyError, IndexError, TypeError, AttributeError):
            return None

    @property
    def aborted(self) -> bool:
        """The client dropped the stream: the response holds what was produced until then (replays stop there)."""
        return self.finish_reason == FINISH_ABORTED

    @property
    def completion_tokens(self) -> int | None:
        value = (self.response.get("usage") or {}).get("completion_tokens")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def problems(self) -> list[str]:
        """What does not verify in this entry (empty when its hashes are consistent)."""
        out = []
        p, r = payload_hash(self.request), response_hash(self.response)
        if p != self.payload_hash:
            out.append(f"request {self.index}: payload hash does not match the request")
        if r != self.response_hash:
            out.append(f"request {self.index}: response hash does not match the response")
        if request_leaf(self.payload_hash, self.response_hash) != self.leaf:
            out.append(f"request {self.index}: leaf is not blake2b(payload hash ‖ response hash)")
        return out

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "request": self.request,
            "response": self.response,
            "units": self.units,
            "usage_units": self.usage_units,
            "reserved_units": self.reserved_units,
            "payload_hash": _hex(self.payload_hash),
            "response_hash": _hex(self.response_hash),
            "leaf": _hex(self.leaf),
            "served_at_ms": self.served_at_ms,
            "request_id": self.request_id,
            "seed": self.seed,
            "arrived_ms": self.arrived_ms,
            "first_token_ms": self.first_token_ms,
        }

    @classmethod
    def from_json(cls, d: dict) -> "HistoryEntry":
        try:
            return cls(
                index=int(d["index"]),
                request=d["request"],
                response=d["response"],
                units=int(d["units"]),
                usage_units=int(d.get("usage_units", d["units"])),
                reserved_units=int(d.get("reserved_units", d["units"])),
                payload_hash=_unhex(d["payload_hash"], "payload_hash"),
                response_hash=_unhex(d["response_hash"], "response_hash"),
                leaf=_unhex(d["leaf"], "leaf"),
                served_at_ms=int(d.get("served_at_ms", 0)),
                request_id=_optional_str(d.get("request_id"), "request_id"),
                seed=_optional_int(d.get("seed"), "seed"),
                arrived_ms=_optional_int(d.get("arrived_ms"), "arrived_ms"),
                first_token_ms=_optional_int(d.get("first_token_ms"), "first_token_ms"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, HistoryError):
                raise
            raise HistoryError(f"malformed history record: {exc!r}") from None


def _optional_int(value: object, what: str) -> int | None:
    # absent in version 1 files; an integer otherwise (a float or a string would be a different file, not a typo)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise HistoryError(f"{what} must be an integer or null, got {value!r}")
    return value


def _optional_str(value: object, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise HistoryError(f"{what} must be a string or null, got {value!r}")
    return value


def response_content(response: dict) -> str | None:
    try:
        return response["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None


@dataclass
class StackHistory:
    """The served requests of one stack in serving order."""

    stack_small_id: int
    entries: list[HistoryEntry] = field(default_factory=list)
    node_small_id: int | None = None
    task_small_id: int | None = None
    model: str | None = None

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def leaves(self) -> list[bytes]:
        return [e.leaf for e in self.entries]

    @property
    def units(self) -> int:
        return sum(e.units for e in self.entries)

    @property
    def root(self) -> bytes | None:
        return merkle_root(self.leaves) if self.entries else None

    @property
    def requests(self) -> list[dict]:
        return [e.request for e in self.entries]

    def verify(self) -> "StackHistory":
        """Raise HistoryError at the first entry whose hashes do not verify or whose index is out of place."""
        for position, entry in enumerate(self.entries):
            if entry.index != position:
                raise HistoryError(f"history of stack {self.stack_small_id}: record {position} has index {entry.index}")
            problems = entry.problems()
            if problems:
                raise HistoryError(f"history of stack {self.stack_small_id}: " + "; ".join(problems))
        return self

    def header(self) -> dict:
        root = self.root
        return {
            "format": FORMAT,
            "version": VERSION,
            "stack_small_id": self.stack_small_id,
            "node_small_id": self.node_small_id,
            "task_small_id": self.task_small_id,
            "model": self.model,
            "num_requests": len(self.entries),
            "units": self.units,
            "root": _hex(root) if root is not None else None,
        }

    def with_entry(self, index: int, entry: HistoryEntry) -> "StackHistory":
        entries = list(self.entries)
        entries[index] = entry
        return replace(self, entries=entries)


def _line(doc: dict) -> str:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def jsonl_lines(history: StackHistory) -> Iterator[str]:
    """The export's lines, each ending in a newline: the header, then one line per request (what
    :func:`export_jsonl` writes to a file and the node streams over HTTP)."""
    yield _line(history.header()) + "\n"
    for entry in history.entries:
        yield _line(entry.to_json()) + "\n"


def export_jsonl(history: StackHistory, path: str | os.PathLike) -> Path:
    """Write the history as one JSONL file (atomically: a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for line in jsonl_lines(history):
            f.write(line)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def import_jsonl(path: str | os.PathLike, *, expect_stack: int | None = None) -> StackHistory:
    """Read and verify a history file: every payload/response hash, every leaf, the indexes, the root and the units
    in the header.

    Raises:
        HistoryError: the file does not verify (the message names the first bad record).
        OSError: the file cannot be read.
    """
    return parse_jsonl(_read_lines(path), str(path), expect_stack=expect_stack)


def parse_jsonl(lines: Sequence[str], path: str, *, expect_stack: int | None = None) -> StackHistory:
    """Verify and read an export given as its non-empty lines (``path``: where they came from, for the messages),
    as :func:`import_jsonl` does for a file.

    Raises:
        HistoryError: the lines do not verify.
    """
    if not lines:
        raise HistoryError(f"{path} is empty")
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError as exc:
        raise HistoryError(f"{path}: the header is not JSON ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise HistoryError(f"{path} is not a stack history (format must be {FORMAT!r})")
    if header.get("version") not in SUPPORTED_VERSIONS:
        raise HistoryError(f"{path}: unsupported history version {header.get('version')!r}")
    stack = int(header["stack_small_id"])
    if expect_stack is not None and stack != expect_stack:
        raise HistoryError(f"{path} is the history of stack {stack}, not stack {expect_stack}")
    entries = []
    for n, text in enumerate(lines[1:], start=2):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise HistoryError(f"{path}:{n}: not JSON ({exc})") from None
        entries.append(HistoryEntry.from_json(doc))
    history = StackHistory(
        stack,
        entries,
        node_small_id=header.get("node_small_id"),
        task_small_id=header.get("task_small_id"),
        model=header.get("model"),
    ).verify()
    if header.get("num_requests") != len(entries):
        raise HistoryError(f"{path}: the header says {header.get('num_requests')} requests, the file has {len(entries)}")
    root = history.root
    if header.get("root") != (_hex(root) if root is not None else None):
        raise HistoryError(f"{path}: the header's root {header.get('root')} is not the root of the records")
    if header.get("units") != history.units:
        raise HistoryError(f"{path}: the header says {header.get('units')} units, the records sum to {history.units}")
    return history


def _read_lines(path: str | os.PathLike) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line for line in (raw.strip() for raw in f) if line]


def entries_from(pairs: Iterable[tuple[dict, dict]]) -> list[HistoryEntry]:
    """History entries for (request, response) pairs, units = the response's usage (for tests and tools)."""
    from ..protocol.compute_units import actual_units

    out = []
    for i, (req, resp) in enumerate(pairs):
        u = actual_units(resp.get("usage") or {})
        out.append(HistoryEntry.build(i, req, resp, units=u, usage_units=u, reserved_units=u))
    return out
