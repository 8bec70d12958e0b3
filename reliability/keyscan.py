"""Search everything an operator's run leaves behind for private key material.

The keys come from the wallets themselves (every ``sui.keystore`` found, or given): for each key the scanner derives
every form in which it could leak — the keystore entry (base64 of ``flag ‖ secret``) and its base64url twin, the
Bech32 ``suiprivkey1…`` string, the 32-byte secret raw, as hex (any case), as base64/base64url at each of the three
byte alignments it can take inside a longer encoded blob, as a Python/JSON list of integers, and the 64-byte
``secret ‖ public key`` form (raw, hex, base64) — and searches:

- every file under the given roots except the keystores themselves, as raw bytes (text and binary alike);
- every table of every SQLite file found (rows queried, WAL included) and every table of every DuckDB file (rows
  queried: DuckDB compresses strings, so the file's bytes alone prove nothing);
- Prefect's logs and artifacts, through the API (:meth:`KeyScanner.scan_prefect_api`) or in a Prefect database file
  (its ``log`` and ``artifact`` tables, counted separately);
- captured stdout/stderr and log records (:meth:`KeyScanner.scan_text`).

A hit names the place, the key's address and the encoding found, never the key.

    .venv/bin/python -m reliability.keyscan ROOT [ROOT ...] [--exclude DIR] [--keystore FILE] [--json]
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import sqlite3
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pysui_fastcrypto as _pfc

from atoma_ops.wallet import KEYSTORE_FILE, address_from_public_key, keypair_from_keystring

__all__ = ["Hit", "KeyForms", "KeyScanner", "ScanReport", "find_keystores", "key_forms", "load_keys"]

_BECH32_PREFIX = "suiprivkey"
_SQLITE_MAGIC = b"SQLite format 3\x00"
_DUCKDB_MAGIC = b"DUCK"  # at offset 8 of a DuckDB database file
# Every text encoding searched uses only these characters (hex and bech32 are subsets of the base64 alphabets), so
# one C-speed regex cuts a haystack into the only runs that can hold one; windows of those runs are then looked up.
_ALPHABET_RUN = re.compile(rb"[A-Za-z0-9+/=_-]{40,}")
_INT_LIST_RUN = re.compile(rb"[0-9][0-9, ]{62,}[0-9]")


@dataclass(frozen=True)
class KeyForms:
    """Every searched form of one private key.

    Attributes:
        address: the key's Sui address (what a hit reports; never the key).
        exact: encoding name by exact string (case-sensitive: base64 forms).
        folded: encoding name by lowercase string (searched case-insensitively: hex, bech32).
        raw: encoding name by raw bytes.
        int_lists: encoding name by the secret's bytes written as a list of integers.
    """

    address: str
    exact: dict[str, str]
    folded: dict[str, str]
    raw: dict[bytes, str]
    int_lists: dict[str, str]

    def __repr__(self) -> str:
        return f"KeyForms(address={self.address!r}, forms={self.count})"

    __str__ = __repr__

    @property
    def count(self) -> int:
        return len(self.exact) + len(self.folded) + len(self.raw) + len(self.int_lists)

    def __reduce__(self) -> Any:
        raise TypeError("key forms hold key material and cannot be pickled")


def _b64_cores(secret: bytes, *, urlsafe: bool) -> dict[str, int]:
    """The part of base64(prefix ‖ secret ‖ suffix) that depends on the secret alone, for each alignment.

    With 0, 1 or 2 bytes before it, the secret starts at a different place of a 3-byte group; dropping the groups
    shared with unknown neighbours leaves 40 characters (240 bits) that any encoding of a blob holding the secret
    contains at that alignment.
    """
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    cores = {}
    for align in range(3):
        text = encode(bytes(align) + secret).decode()
        start = 0 if align == 0 else 4
        cores[text[start : start + 40]] = align
    return cores


def key_forms(entry: str) -> KeyForms:
    """Derive every searched form of a keystore entry (base64 ``flag ‖ secret`` or bech32 ``suiprivkey…``)."""
    kp = keypair_from_keystring(entry)
    flag, public = int(kp.scheme), bytes(kp.public_key_bytes)
    secret = bytes(base64.b64decode(kp.serialize())[1:])
    flagged = bytes([flag]) + secret
    exact = {base64.b64encode(flagged).decode(): "keystore entry (base64 of flag+secret)"}
    exact.setdefault(base64.urlsafe_b64encode(flagged).decode(), "keystore entry as base64url")
    for core, align in _b64_cores(secret, urlsafe=False).items():
        exact.setdefault(core, f"secret as base64 (alignment {align})")
    for core, align in _b64_cores(secret, urlsafe=True).items():
        exact.setdefault(core, f"secret as base64url (alignment {align})")
    folded = {
        str(_pfc.encode_bech32(list(flagged), _BECH32_PREFIX)).lower(): "bech32 suiprivkey",
        secret.hex(): "secret as hex",
    }
    raw = {secret: "secret raw bytes"}
    if len(public) == 32:  # ed25519's 64-byte expanded form: secret ‖ public key
        wide = secret + public
        raw[wide] = "secret+public raw bytes (64)"
        folded[wide.hex()] = "secret+public as hex (64)"
        exact.setdefault(base64.b64encode(wide).decode()[:84], "secret+public as base64 (64)")
    ints = list(secret)
    int_lists = {
        ", ".join(map(str, ints)): "secret as a list of integers",
        ",".join(map(str, ints)): "secret as a list of integers (compact)",
    }
    return KeyForms(address_from_public_key(flag, public), exact, folded, raw, int_lists)


def find_keystores(roots: Iterable[str | Path]) -> list[Path]:
    """Every ``sui.keystore`` under ``roots`` (a root may itself be a keystore file)."""
    found: list[Path] = []
    for root in map(Path, roots):
        if root.is_file() and root.name == KEYSTORE_FILE:
            found.append(root)
        elif root.is_dir():
            found.extend(sorted(p for p in root.rglob(KEYSTORE_FILE) if p.is_file()))
    return sorted(set(found))


def load_keys(keystores: Iterable[str | Path]) -> list[KeyForms]:
    """The forms of every key of the given keystores (Sui's JSON array of entries)."""
    keys: dict[str, KeyForms] = {}
    for path in keystores:
        entries = json.loads(Path(path).read_text())
        for entry in entries:
            forms = key_forms(entry)
            keys.setdefault(forms.address, forms)
    return list(keys.values())


@dataclass(frozen=True)
class Hit:
    """Key material found: where, whose key (its address), in which encoding."""

    place: str
    kind: str
    address: str
    encoding: str


@dataclass
class ScanReport:
    keys: int
    forms: int
    hits: list[Hit]
    searched: dict[str, int]

    def to_json(self) -> dict:
        return {"keys": self.keys, "forms": self.forms, "hits": [asdict(h) for h in self.hits],
                "searched": dict(self.searched)}


@dataclass
class KeyScanner:
    """Searches places for the forms of ``keys``; collects hits and what was searched.

    Args:
        keys: from :func:`load_keys`.
        skip: files never searched (the keystores: the one place a key belongs).
    """

    keys: list[KeyForms]
    skip: set[Path] = field(default_factory=set)
    hits: list[Hit] = field(default_factory=list)
    searched: Counter = field(default_factory=Counter)
    #: databases whose rows could not be read (locked, corrupt): only their bytes were searched
    unreadable: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._exact: dict[str, tuple[str, str]] = {}
        self._folded: dict[str, tuple[str, str]] = {}
        self._raw: list[tuple[bytes, str, str]] = []
        self._ints: list[tuple[bytes, str, str]] = []
        for k in self.keys:
            self._exact.update({s: (k.address, e) for s, e in k.exact.items()})
            self._folded.update({s: (k.address, e) for s, e in k.folded.items()})
            self._raw.extend((b, k.address, e) for b, e in k.raw.items())
            self._ints.extend((s.encode(), k.address, e) for s, e in k.int_lists.items())
        self._exact_lengths = sorted({len(s) for s in self._exact})
        self._folded_lengths = sorted({len(s) for s in self._folded})
        self.skip = {p.resolve() for p in self.skip}

    @classmethod
    def for_roots(cls, roots: Iterable[str | Path], keystores: Iterable[str | Path] = ()) -> "KeyScanner":
        """The keys of every keystore under ``roots`` (plus ``keystores``), those keystores skipped."""
        stores = sorted(set(find_keystores(roots)) | {Path(p) for p in keystores})
        return cls(load_keys(stores), skip=set(stores))

    # ----------------------------------------------------------------------------------------------- haystacks
    def scan_bytes(self, data: bytes, place: str, kind: str) -> list[Hit]:
        """Search one haystack; record and return its hits (one per key and encoding)."""
        found: set[tuple[str, str]] = set()
        for match in _ALPHABET_RUN.finditer(data):
            run = match.group()
            self._windows(run.decode("ascii"), self._exact, self._exact_lengths, found)
            self._windows(run.decode("ascii").lower(), self._folded, self._folded_lengths, found)
        for needle, address, encoding in self._raw:
            if needle in data:
                found.add((address, encoding))
        if self._ints:
            for match in _INT_LIST_RUN.finditer(data):
                run = match.group()
                found.update((a, e) for n, a, e in self._ints if n in run)
        hits = [Hit(place, kind, a, e) for a, e in sorted(found)]
        self.hits.extend(hits)
        return hits

    @staticmethod
    def _windows(run: str, table: dict[str, tuple[str, str]], lengths: list[int], found: set) -> None:
        # A long run (a base64 blob) is cheaper to search needle by needle in C than window by window.
        if len(run) * len(lengths) > 16 * len(table):
            found.update(hit for needle, hit in table.items() if needle in run)
            return
        for n in lengths:
            for i in range(len(run) - n + 1):
                hit = table.get(run[i : i + n])
                if hit is not None:
                    found.add(hit)

    def scan_text(self, text: str, place: str, kind: str = "captured") -> list[Hit]:
        """Captured output or log records."""
        self.searched[f"{kind}_chars"] += len(text)
        self.searched[f"{kind}_texts"] += 1
        return self.scan_bytes(text.encode("utf-8", "surrogateescape"), place, kind)

    # ----------------------------------------------------------------------------------------------- files
    def scan_tree(self, root: str | Path, *, exclude: Iterable[str | Path] = (), base: Path | None = None) -> None:
        """Every file under ``root`` (or ``root`` itself), but the keystores and anything under ``exclude``."""
        root = Path(root)
        excluded = [Path(p).resolve() for p in exclude]
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in paths:
            resolved = path.resolve()
            if resolved in self.skip or any(resolved.is_relative_to(e) for e in excluded):
                continue
            self.scan_file(path, _label(path, base))

    def scan_file(self, path: Path, label: str | None = None) -> None:
        """One file's bytes; and its rows when it is a SQLite or DuckDB database."""
        label = label or str(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # removed while scanning (a WAL checkpoint, a temp file)
            return
        self.searched["files"] += 1
        self.searched["file_bytes"] += len(data)
        self.scan_bytes(data, f"file {label}", "file")
        try:
            if data.startswith(_SQLITE_MAGIC):
                self.scan_sqlite(path, label)
            elif data[8:12] == _DUCKDB_MAGIC:
                self.scan_duckdb(path, label)
        except Exception as exc:  # noqa: BLE001 - sqlite3/duckdb errors: reported, never silently skipped
            self.unreadable.append(f"{label} ({type(exc).__name__})")

    def _scan_rows(self, rows: Iterable[tuple], place: str, kind: str) -> int:
        parts: list[bytes] = []
        count = 0
        for row in rows:
            count += 1
            for value in row:
                if isinstance(value, (bytes, bytearray, memoryview)):
                    parts.append(bytes(value))
                elif value is not None:
                    parts.append(str(value).encode("utf-8", "surrogateescape"))
        self.scan_bytes(b"\n".join(parts), place, kind)
        return count

    def scan_sqlite(self, path: Path, label: str | None = None) -> None:
        """Every row of every table of a SQLite file (read-only; the WAL is read too). A Prefect database's logs
        and artifacts are counted on their own."""
        label = label or str(path)
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        con.text_factory = bytes  # never fail on a non-UTF-8 value: search bytes
        try:
            tables = [r[0].decode() for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            prefect = {"log", "artifact", "flow_run"} <= set(tables)
            for table in tables:
                rows = self._scan_rows(con.execute(f'SELECT * FROM "{table}"'), f"sqlite {label} table {table}",
                                       "sqlite")
                self.searched["sqlite_tables"] += 1
                self.searched["sqlite_rows"] += rows
                if prefect and table == "log":
                    self.searched["prefect_log_lines"] += rows
                elif prefect and table == "artifact":
                    self.searched["prefect_artifacts"] += rows
        finally:
            con.close()

    def scan_duckdb(self, path: Path, label: str | None = None) -> None:
        """Every row of every table of a DuckDB file, queried (opened read-only)."""
        import duckdb

        label = label or str(path)
        con = duckdb.connect(str(path), read_only=True)
        try:
            tables = con.execute(
                "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
            ).fetchall()
            for schema, table in tables:
                rows = self._scan_rows(con.execute(f'SELECT * FROM "{schema}"."{table}"').fetchall(),
                                       f"duckdb {label} table {table}", "duckdb")
                self.searched["duckdb_tables"] += 1
                self.searched["duckdb_rows"] += rows
        finally:
            con.close()

    # ----------------------------------------------------------------------------------------------- Prefect
    async def scan_prefect_api(self, flow_run_ids: Iterable[Any] | None = None, *, page: int = 200) -> None:
        """The logs and artifacts the current Prefect API holds (of ``flow_run_ids``, or all), via its client."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId

        from prefect.logging.handlers import APILogHandler

        await APILogHandler.aflush()  # logs still queued for the API are sent (and searched) too
        ids = None if flow_run_ids is None else list(flow_run_ids)
        log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)) if ids is not None else None
        artifact_filter = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids)) if ids is not None else None
        async with get_client() as client:
            offset = 0
            while True:
                logs = await client.read_logs(log_filter=log_filter, limit=page, offset=offset)
                for log in logs:
                    self.searched["prefect_log_lines"] += 1
                    self.scan_bytes(f"{log.name}\n{log.message}".encode(), f"prefect log {log.id}", "prefect-log")
                if len(logs) < page:
                    break
                offset += page
            offset = 0
            while True:
                artifacts = await client.read_artifacts(artifact_filter=artifact_filter, limit=page, offset=offset)
                for artifact in artifacts:
                    self.searched["prefect_artifacts"] += 1
                    text = json.dumps([artifact.key, artifact.description, artifact.data, artifact.metadata_],
                                      default=str)
                    self.scan_bytes(text.encode(), f"prefect artifact {artifact.key or artifact.id}",
                                    "prefect-artifact")
                if len(artifacts) < page:
                    break
                offset += page

    # ----------------------------------------------------------------------------------------------- results
    def report(self) -> ScanReport:
        return ScanReport(len(self.keys), sum(k.count for k in self.keys), list(self.hits), dict(self.searched))


def _label(path: Path, base: Path | None) -> str:
    if base is not None:
        try:
            return path.resolve().relative_to(base.resolve()).as_posix()
        except ValueError:
            pass
    return path.as_posix()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path, help="folders or files to search")
    parser.add_argument("--keystore", action="append", default=[], type=Path,
                        help="a keystore whose keys to search for (default: every sui.keystore under the roots)")
    parser.add_argument("--exclude", action="append", default=[], type=Path, help="a folder not to search")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    opts = parser.parse_args(argv)
    scanner = KeyScanner.for_roots(opts.roots, opts.keystore)
    for root in opts.roots:
        scanner.scan_tree(root, exclude=opts.exclude, base=Path.cwd())
    report = scanner.report()
    if opts.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(f"{report.keys} keys, {report.forms} forms; searched {dict(report.searched)}")
        for hit in report.hits:
            print(f"HIT {hit.place}: key of {hit.address} as {hit.encoding}")
        print(f"{len(report.hits)} hits")
    return 1 if report.hits else 0


if __name__ == "__main__":
    sys.exit(main())
