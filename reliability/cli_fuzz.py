"""Part 5 of the reliability harness: a generative test of the whole ``atoma-ops`` command line.

Hypothesis draws a command from the real command tree (``atoma_ops.cli.app``, walked at run time, so a command
added later is covered without an edit here) and a value for each of its parameters, from the parameter's type and
its edges: 0, -1, 2^63-1, 2^63, 2^64-1, 2^64, huge numbers, words where numbers go, empty and huge strings, text
that is not UTF-8, the scenario's real ids, aliases and addresses, and paths that are missing, directories, a FIFO
the harness makes, a file of non-UTF-8 bytes, an empty file, a file that already exists, or a path through a file.
Each case runs in process (``atoma_ops.cli.main``) on its own copy of one scenario home (the bad-input table's:
served, settled and claimed stacks, node stores, a synced ledger), with ``--json`` or without, and must:

- exit with a documented status for a handled outcome: 0, 1 or 2 (3 is an internal error: a finding);
- print no traceback, and under ``--json`` exactly one JSON document on stdout, whatever the outcome;
- on failure leave the chain, the node stores and the ledger as they were (``reliability.digests``), and the
  wallet files byte for byte;
- never lose a key: after any command the home's keystore loads, and only a successful ``localnet init --force``
  may replace it;
- leave nothing half-written behind (``*.tmp``, ``*.part``, a ``.…init-…`` or ``.export-…`` folder), and write
  nothing outside its own folder (cases run in an empty working directory, which must stay empty).

Not drawn: ``--engine cpu`` (it loads SmolLM2 for tens of seconds per case; the serving tests cover it), a free
port for ``node serve`` (it would serve until stopped), and ``atoma-ops prefect`` (Prefect's own commands against
a Prefect API). Nothing opens a device (no path under /dev is drawn) and nothing leaves this machine: URLs name a
closed port of 127.0.0.1, hosts are addresses or ``localhost``.

    .venv/bin/python -m reliability.cli_fuzz [--examples N] [--seed S] [--results DIR]

writes ``<results>/cli_fuzz.json`` and ``cli_fuzz.md`` (section ``## 5. Generative CLI test``, with the number of
cases tried) and exits 0 iff no case failed. The fast slice in ``make test`` is ``tests/cli/test_generative.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "data" / "reliability"
PART = "cli_fuzz"
TITLE = "## 5. Generative CLI test"

HANDLED = (0, 1, 2)  # the documented statuses of a handled outcome (README: 3 is an internal error, 130 Ctrl-C)
NOT_DRAWN = {("prefect",)}
LEFTOVER_MARKS = (".tmp", ".part", ".init-", ".export-", ".old-", ".rewrite")
WALLET_FILES = ("sui.keystore", "sui.aliases", "client.yaml")

U = [0, -1, 1, 2, 3, 7, 255, 256, 65535, 65536, 2**31, 2**63 - 5, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63),
     10**40]
WORDS = ["", "abc", "0x", "1e3", "1.5", " 1", "١", "-", "--", "\udcff\udcfe"]


# ------------------------------------------------------------------------------------------------------ the tree
def commands() -> list[tuple[tuple[str, ...], Any]]:
    """Every leaf command of the CLI as (path, click command), in a stable order."""
    import typer

    from atoma_ops.cli import app

    root = typer.main.get_command(app)
    out: list[tuple[tuple[str, ...], Any]] = []

    def walk(group: Any, path: tuple[str, ...]) -> None:
        for name in sorted(group.commands):
            command = group.commands[name]
            if getattr(command, "hidden", False) or (*path, name) in NOT_DRAWN:
                continue
            if hasattr(command, "commands"):
                walk(command, (*path, name))
            else:
                out.append(((*path, name), command))

    walk(root, ())
    return out


def command_params(command: Any) -> list[Any]:
    """The command's own options and arguments (not the help option; the copied global ones come separately)."""
    from atoma_ops.cli.core import GLOBAL_PANEL

    return [p for p in command.params if getattr(p, "rich_help_panel", None) != GLOBAL_PANEL
            and p.name not in ("help",) and not getattr(p, "hidden", False)]


# ------------------------------------------------------------------------------------------------------ the places
@dataclass
class Places:
    """Files and folders a case can name, made once per run (never written by a command: the outputs are under
    each case's own folder)."""

    root: Path
    ids: dict[str, int]
    busy_port: int
    paths: dict[str, str] = field(default_factory=dict)

    @classmethod
    def make(cls, root: Path, ids: dict[str, int], busy_port: int) -> "Places":
        root.mkdir(parents=True, exist_ok=True)
        places = cls(root, ids, busy_port)
        d = root / "a-directory"
        d.mkdir(exist_ok=True)
        fifo = root / "a-fifo"
        if not fifo.exists():
            os.mkfifo(fifo)
        (root / "not-utf8.jsonl").write_bytes(b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}\n')
        (root / "empty.jsonl").write_bytes(b"")
        (root / "workload.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}\n')
        (root / "not-json.jsonl").write_text("{nope\n")
        (root / "existing.out").write_text("keep me\n")
        (root / "a-file").write_text("a file, not a folder\n")
        (root / "sqlite.db").write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
        places.paths = {
            "missing": str(root / "missing" / "file"),
            "directory": str(d),
            "fifo": str(fifo),
            "not-utf8": str(root / "not-utf8.jsonl"),
            "empty": str(root / "empty.jsonl"),
            "workload": str(root / "workload.jsonl"),
            "not-json": str(root / "not-json.jsonl"),
            "existing": str(root / "existing.out"),
            "through-a-file": str(root / "a-file" / "child"),
            "sqlite": str(root / "sqlite.db"),
            "huge-name": str(root / ("n" * 300)),
            "empty-name": "",
        }
        return places

    def snapshot(self) -> dict[str, bytes | None]:
        """The bytes of every file a case may name (none may change)."""
        out: dict[str, bytes | None] = {}
        for name, path in self.paths.items():
            try:
                out[name] = Path(path).read_bytes() if path and Path(path).is_file() else None
            except OSError:  # a name too long to exist
                out[name] = None
        return out


# ------------------------------------------------------------------------------------------------------ values
def _ints(places: Places) -> st.SearchStrategy[str]:
    ids = sorted(set(places.ids.values()))
    return st.one_of(
        st.sampled_from([str(v) for v in U] + [str(i) for i in ids]),
        st.integers(min_value=-(2**65), max_value=2**65).map(str),
        st.sampled_from(WORDS),
    )


def _text() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(WORDS + ["x" * 20_000, "user", "node-1", "0x" + "ab" * 32, "0x1", "a b", "'", "\n"]),
        st.text(max_size=30),
    )


def _path(places: Places, own: Path, *, output: bool) -> st.SearchStrategy[str]:
    names = list(places.paths.values())
    if output:  # a fresh name in the case's own folder (a success writes there), and the refused ones
        names = [n for n in names if n != places.paths["missing"]]
        names += [str(own / "out" / "fresh.file"), str(own / "out-dir")]
    return st.sampled_from(names)


_OUTPUT_FLAGS = {"--export", "--parquet", "--duckdb", "--out"}
_PATH_WORDS = ("file", "workload", "history", "export", "out", "parquet", "duckdb", "ledger")
_HEX_FLAGS = {"--committed-stack-proof", "--stack-merkle-leaf", "--attestation-commitment"}
_WHO_FLAGS = {"--to", "--node", "--address"}
_ID_FLAGS = {"--badge", "--node-badge", "--task-badge", "--wallet"}


def value_for(param: Any, places: Places, own: Path) -> st.SearchStrategy[str]:
    """A value of ``param`` (as the command line gives it: text), drawn from its type and its edges."""
    flag = next((o for o in param.opts if o.startswith("--")), param.opts[0] if param.opts else param.name)
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    name = str(getattr(annotation, "__name__", annotation)).lower()
    if flag == "--port":
        return st.sampled_from(["0", "-1", "65536", str(2**64), "http", str(places.busy_port)])
    if flag == "--engine":
        return st.sampled_from(["openai", "vllm", "bogus", "", "CPU "])
    if "url" in flag:  # only this machine: a closed port (refused at once), or no URL at all
        return st.sampled_from(["http://127.0.0.1:9", "not a url", "", "http://[::1", "ftp://127.0.0.1:9",
                                "http://127.0.0.1:99999", "\udcff"])
    if flag == "--host":  # names /etc/hosts or the address parser answers: no name is looked up elsewhere
        return st.sampled_from(["127.0.0.1", "localhost", "", "::1", "\udcff"])
    if flag == "--by":
        return st.sampled_from(["node", "task", "epoch", "epoch_node", "planet", ""])
    if flag in _HEX_FLAGS:
        return st.sampled_from(["0x" + "11" * 32, "0x" + "22" * 31, "0x" + "33" * 33, "0x", "0xzz", "", "11" * 32,
                                "0x" + "44" * 20_000, "0x\udcff"])
    if flag in _WHO_FLAGS or param.name == "who":
        return st.sampled_from(["user", "node-1", "node-2", "node-3", "admin", "nobody", "", "0x" + "ab" * 32,
                                "0xnothex", "\udcff"])
    if flag in _ID_FLAGS:
        return st.sampled_from(["0x1", "0x" + "ab" * 32, "0x" + "1" * 65, "xyz", "", "0x\udcff"])
    if flag in _OUTPUT_FLAGS:
        return _path(places, own, output=True)
    if any(w in flag for w in _PATH_WORDS) or name == "path":
        return _path(places, own, output=False)
    if "int" in name:
        return _ints(places)
    if "float" in name:
        return st.sampled_from(["0", "-1", "0.01", "1e308", "nan", "inf", "abc", ""])
    return _text()


@st.composite
def argv_for(draw: Any, path: tuple[str, ...], command: Any, places: Places, own: Path) -> list[str]:
    """A full command line for ``path``: the global options (before or after the subcommand), and each parameter
    given (required ones mostly) or left out, once or several times."""
    args: list[str] = []
    for param in command_params(command):
        if getattr(param, "is_flag", False):
            if draw(st.booleans()):
                args.append(draw(st.sampled_from([o for o in (*param.opts, *param.secondary_opts) if o.startswith("-")])))
            continue
        give = draw(st.floats(0, 1)) < (0.92 if param.required else 0.5)
        if not give:
            continue
        times = draw(st.integers(1, 3)) if getattr(param, "multiple", False) else 1
        for _ in range(times):
            value = draw(value_for(param, places, own))
            if param.param_type_name == "argument":
                args.append(value)
            else:
                args += [param.opts[0], value]
    glob: list[str] = ["--home", str(own / "home") if draw(st.floats(0, 1)) < 0.97 else ""]
    if draw(st.booleans()):
        glob.append("--json")
    if draw(st.floats(0, 1)) < 0.4:
        glob += ["--address", draw(st.sampled_from(["user", "node-1", "node-2", "admin", "nobody", "0x" + "ab" * 32]))]
    if draw(st.floats(0, 1)) < 0.1:  # Sui without its settings, or no network at all (never testnet: no way out)
        glob += ["--network", draw(st.sampled_from(["custom", "mainnet", "", "localnet"]))]
    after = draw(st.booleans())
    return [*path, *args, *glob] if after else [*glob, *path, *args]


def case_strategy(places: Places, own: Path, only: list | None = None) -> st.SearchStrategy[list[str]]:
    tree = only if only is not None else commands()
    return st.sampled_from(tree).flatmap(lambda pc: argv_for(pc[0], pc[1], places, own))


# ------------------------------------------------------------------------------------------------------ one case
@dataclass
class Outcome:
    argv: list[str]
    status: int
    problems: list[str]
    kind: str | None
    seconds: float
    said: str = ""  # the end of what the command printed, kept for a failed case


def run(argv: list[str]) -> tuple[int, str, str]:
    """``atoma-ops ARGV`` in process: (status, stdout, stderr)."""
    from atoma_ops.cli import main

    out, err = io.StringIO(), io.StringIO()
    stdin = sys.stdin
    sys.stdin = io.StringIO("")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = main(argv)
            except SystemExit as exc:
                status = exc.code if isinstance(exc.code, int) else 1
            except BaseException as exc:  # noqa: BLE001 - anything that escapes main is a finding
                status = -1
                err.write(f"escaped main: {type(exc).__name__}: {exc}")
    finally:
        sys.stdin = stdin
    return status, out.getvalue(), err.getvalue()


STUCK_S = 60


class _Watchdog:
    """A case that blocks (a FIFO opened for reading waits for a writer forever) is a finding, not a hung run:
    after STUCK_S seconds, open the FIFO for writing once, which lets the reader see end-of-file."""

    def __init__(self, places: Places):
        import threading

        self.fired = False
        self.fifo = places.paths["fifo"]
        self.timer = threading.Timer(STUCK_S, self._fire)
        self.timer.daemon = True
        self.timer.start()

    def _fire(self) -> None:
        self.fired = True
        try:
            fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        except OSError:
            pass

    def cancel(self) -> None:
        self.timer.cancel()


def _leftovers(folder: Path) -> list[str]:
    found = []
    for p in folder.rglob("*"):
        if any(mark in p.name for mark in LEFTOVER_MARKS):
            found.append(str(p.relative_to(folder)))
    return found


def _wallet_bytes(home: Path) -> dict[str, bytes | None]:
    return {n: (home / n).read_bytes() if (home / n).is_file() else None for n in WALLET_FILES}


def files_digest(home: Path) -> str:
    """A hash of the bytes of every durable file of a home (chain, node stores, ledger, their WALs): equal bytes
    need no logical comparison (``state_digests`` costs tenths of a second; most cases read nothing)."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    if not home.exists():
        return "absent"
    for p in sorted(home.rglob("*")):
        if not p.is_file() or p.name in WALLET_FILES or p.name.endswith("-shm"):  # -shm: SQLite's index, no data
            continue
        if p.name.endswith(("-wal", ".wal")) and p.stat().st_size == 0:  # opened in WAL mode, nothing written
            continue
        h.update(p.relative_to(home).as_posix().encode() + b"\x00" + p.read_bytes())
    return h.hexdigest()


def check_case(argv: list[str], own: Path, before: Any, places: Places, places_before: dict,
               before_files: str = "") -> Outcome:
    """Run one drawn command line on ``own/home`` (a fresh copy of the scenario) and check every rule."""
    from atoma_ops.wallet import Wallet
    from reliability.digests import state_digests

    home = own / "home"
    wallet_before = _wallet_bytes(home)
    t0 = time.perf_counter()
    stuck = _Watchdog(places)
    try:
        status, out, err = run(argv)
    finally:
        stuck.cancel()
    seconds = time.perf_counter() - t0
    problems: list[str] = [f"hung (over {STUCK_S} s; unblocked by writing to the FIFO)"] if stuck.fired else []
    # "--json" after a "--" is an option only when that "--" was the value of an option: take what was printed
    json_mode = "--json" in (argv[: argv.index("--")] if "--" in argv else argv) or (
        "--json" in argv and out.lstrip().startswith("{"))
    if status not in HANDLED:
        problems.append(f"exit status {status} (not one of {HANDLED})")
    if "Traceback" in out or "Traceback" in err:
        problems.append("a traceback was printed")
    kind = None
    if json_mode:
        try:
            doc = json.loads(out)
        except ValueError:
            problems.append(f"--json: stdout is not one JSON document: {out[:200]!r}")
        else:
            if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
                kind = doc["error"].get("kind")
                if status == 0:
                    problems.append("an error document with exit status 0")
    elif status != 0:
        kind = err.strip().split(":", 2)[1].strip() if err.startswith("Error:") else None
        kind = "MoveAbort" if kind == "transaction aborted" else kind  # the abort's line names the constant after
        if status == 1 and "Error:" not in err and "drift" not in out:
            problems.append(f"exit 1 without a named error line: {err[-200:]!r}")
    replaced = status == 0 and argv_command(argv)[:2] == ("localnet", "init")
    if status != 0 and files_digest(home) != before_files:
        after = state_digests(home) if home.exists() else None
        if after is None or after != before:
            changed = before.changed(after) if after is not None else ["home removed"]
            problems.append(f"failed, yet changed: {', '.join(changed)}")
        if _wallet_bytes(home) != wallet_before:
            problems.append("failed, yet a wallet file changed")
    if not replaced and _wallet_bytes(home)["sui.keystore"] != wallet_before["sui.keystore"]:
        problems.append("the keystore changed")
    if (home / "client.yaml").exists():
        try:
            Wallet.load(home / "client.yaml")
        except Exception as exc:  # noqa: BLE001
            problems.append(f"the wallet no longer loads: {type(exc).__name__}: {exc}")
    else:
        problems.append("client.yaml is gone")
    left = _leftovers(own)
    if left:
        problems.append(f"left behind: {left[:5]}")
    strays = os.listdir(".")  # cases run in an empty working directory: a relative or empty path lands here
    if strays:
        problems.append(f"wrote outside its folder, into the working directory: {sorted(strays)[:5]}")
        for name in strays:
            shutil.rmtree(name, ignore_errors=True) if os.path.isdir(name) else os.unlink(name)
    if places.snapshot() != places_before:
        problems.append("an input file changed")
    return Outcome(argv, status, problems, kind, seconds, (out[-300:] + err[-500:]) if problems else "")


def argv_command(argv: list[str]) -> tuple[str, ...]:
    """The command path (group, command) of a drawn command line (global options may come first)."""
    out: list[str] = []
    i = 0
    while i < len(argv) and len(out) < 2:
        a = argv[i]
        if a in ("--home", "--address", "--network"):  # the global options drawn with a value
            i += 2
            continue
        if a.startswith("-"):
            if out:
                break
            i += 1
            continue
        out.append(a)
        i += 1
    return tuple(out)


# ------------------------------------------------------------------------------------------------------ the run
@dataclass
class Harness:
    """One scenario home, its digests, the places, and a fresh copy per case."""

    workdir: Path
    scenario_home: Path
    ids: dict[str, int]
    before: Any
    places: Places
    places_before: dict
    before_files: str = ""
    _n: int = 0
    _listener: Any = None

    @classmethod
    @contextlib.contextmanager
    def open(cls, workdir: Path, scenario_home: Path | None = None, ids: dict[str, int] | None = None) -> Iterator["Harness"]:
        from reliability.bad_inputs import build_scenario
        from reliability.digests import state_digests

        if scenario_home is None:
            scenario = build_scenario(workdir / "scenario")
            scenario_home, ids = scenario.home, scenario.ids
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        cwd = os.getcwd()
        empty = workdir / "cwd"
        empty.mkdir(exist_ok=True)
        os.chdir(empty)
        try:
            places = Places.make(workdir / "places", ids or {}, listener.getsockname()[1])
            yield cls(workdir, scenario_home, ids or {}, state_digests(scenario_home), places, places.snapshot(),
                      files_digest(scenario_home), _listener=listener)
        finally:
            os.chdir(cwd)
            listener.close()

    def fresh(self) -> Path:
        """The next case's folder (made by :meth:`check`, after the command line is drawn: a draw hypothesis
        abandons leaves nothing behind)."""
        self._n += 1
        return self.workdir / "cases" / f"c{self._n}"

    def check(self, own: Path, argv: list[str]) -> Outcome:
        """Copy the scenario home into ``own`` (client.yaml naming the copy's keystore), run and check ``argv``."""
        from reliability.bad_inputs import copy_home

        own.mkdir(parents=True)
        try:
            copy_home(self.scenario_home, own / "home")
            return check_case(argv, own, self.before, self.places, self.places_before, self.before_files)
        finally:
            shutil.rmtree(own, ignore_errors=True)


def markdown(outcomes: list[Outcome], failures: list[Outcome], seconds: float, seed: int, n_commands: int) -> str:
    statuses = Counter(o.status for o in outcomes)
    kinds = Counter(o.kind for o in outcomes if o.kind)
    per_command = Counter(" ".join(argv_command(o.argv)) for o in outcomes)
    lines = [
        TITLE, "",
        f"`python -m reliability.cli_fuzz` (hypothesis, seed {seed}): **{len(outcomes)} cases tried** over "
        f"{n_commands} commands ({len(per_command)} reached) in {seconds:.0f} s; **{len(failures)} failed**. "
        "Each case is one drawn command line on its own copy of the bad-input scenario; the rules are in "
        "`reliability/cli_fuzz.py` (documented exit status, no traceback, one JSON document under `--json`, "
        "state digests and wallet files unchanged on failure, no key lost, nothing half-written left, nothing written outside the case's folder).", "",
        "| exit status | cases |", "|---|---|",
        *(f"| {s} | {n} |" for s, n in sorted(statuses.items())), "",
        "Named errors met (JSON `kind` or the error line's name), most frequent first:", "",
        ", ".join(f"`{k}` {n}" for k, n in kinds.most_common(40)) or "none", "",
    ]
    if failures:
        lines += ["| command line | status | problems |", "|---|---|---|"]
        for o in failures[:50]:
            shown = " ".join(o.argv).replace("|", "\\|")[:300]
            lines.append(f"| `{shown}` | {o.status} | {'; '.join(o.problems)[:300]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from hypothesis import HealthCheck, Phase, given, seed as hseed, settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    parser.add_argument("--results", type=Path, default=RESULTS)
    opts = parser.parse_args(argv)
    outcomes: list[Outcome] = []
    failures: list[Outcome] = []
    tree = commands()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cli-fuzz-") as tmp, quiet():
        with Harness.open(Path(tmp)) as harness:

            @hseed(opts.seed)
            @settings(max_examples=opts.examples, deadline=None, database=None, derandomize=False,
                      phases=[Phase.generate], suppress_health_check=list(HealthCheck))
            @given(data=st.data())
            def campaign(data: Any) -> None:
                own = harness.fresh()
                argv_ = data.draw(case_strategy(harness.places, own, tree))
                outcome = harness.check(own, argv_)
                outcomes.append(outcome)
                if outcome.problems:
                    failures.append(outcome)
                    print(f"FAIL {outcome.argv!r}: {outcome.problems}\n  said: {outcome.said!r}", file=sys.__stderr__)

            campaign()
            workdir = str(Path(tmp))
    seconds = time.perf_counter() - started
    for o in outcomes:  # results hold no path of this machine
        o.argv = [a.replace(workdir, "<tmp>") for a in o.argv]
    opts.results.mkdir(parents=True, exist_ok=True)
    (opts.results / f"{PART}.json").write_text(json.dumps({
        "ok": not failures, "cases": len(outcomes), "failed": len(failures), "seconds": round(seconds, 1),
        "seed": opts.seed, "commands": len(tree),
        "failures": [{"argv": o.argv, "status": o.status, "problems": o.problems, "said": o.said.replace(workdir, "<tmp>")}
                     for o in failures[:200]],
    }, indent=2))
    (opts.results / f"{PART}.md").write_text(markdown(outcomes, failures, seconds, opts.seed, len(tree)))
    print(f"{len(outcomes)} cases, {len(failures)} failed, {seconds:.0f} s", file=sys.__stderr__)
    return 0 if not failures else 1


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The commands' own logs (uvicorn, httpx) stay out of the harness's output."""
    import logging

    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


if __name__ == "__main__":
    sys.exit(main())
