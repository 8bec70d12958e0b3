"""``atoma-ops node …`` and ``atoma-ops stack …``: in process (typer's runner, the session engine patched in for
``load_engine``) for the whole stack lifecycle and its errors, and one real ``atoma-ops node serve`` subprocess
(it loads the model itself, ~20 s)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.cli.clikit import Cli, event, sid  # noqa: E402

from atoma_ops.cli import app  # noqa: E402

from atoma_ops.client import RequestSigner  # noqa: E402
from atoma_ops.home import LocalnetHome  # noqa: E402
from atoma_ops.testing.leases import wait_out_leases  # noqa: E402
from atoma_ops.wallet import Wallet  # noqa: E402
from tests.serving.buyer_kit import signed_headers  # noqa: E402
from tests.serving.test_kit import REPO, STUB_ENGINE_SRC, ask, stub_engine  # noqa: E402

SCRIPT = Path(sys.executable).parent / "atoma-ops"


def _market(home: Path, model: str) -> Cli:
    """A home with a SamplingConsensus task (attestation forced), node-1 and node-2 subscribed, a 100 000-unit
    stack bought by the user."""
    c = Cli(home)
    c.aliases = c.ok("localnet", "init", "--seed", "1")["aliases"]
    c.ok("usdc", "mint", "--amount", "10000000", "--to", "user")
    c.ok("db", "create-task-entry", "--role", "0", "--model-name", model, "--security-level", "2", "--is-public")
    for alias in ("node-1", "node-2"):
        c.ok("db", "register-node", address=alias)
        c.ok("db", "subscribe-node-to-task", "--task-small-id", "1", "--price-per-one-million-compute-units", "1000000",
             address=alias)
    c.ok("db", "set-cross-validation-probability-permille", "--value", "1000")
    tx = c.ok("db", "acquire-new-stack-entry", "--task-small-id", "1", "--num-compute-units", "100000", "--price",
              "1000000", address="user")
    c.selected = sid(event(tx, "StackCreatedEvent")["selected_node_id"])  # type: ignore[attr-defined]
    return c


@pytest.fixture
def cli(tmp_path, engine, monkeypatch) -> Cli:
    """``_market``, and ``load_engine`` returns the session engine."""
    monkeypatch.setattr("atoma_ops.serving.node.load_engine", lambda kind="cpu", **kw: engine)
    return _market(tmp_path / "home", engine.model)


@pytest.fixture
def stub_cli(tmp_path, monkeypatch) -> Cli:
    """``_market``, and ``load_engine`` returns the stub engine (for what does not depend on the model)."""
    monkeypatch.setattr("atoma_ops.serving.node.load_engine", lambda kind="cpu", **kw: stub_engine())
    return _market(tmp_path / "home", "HuggingFaceTB/SmolLM2-135M-Instruct")


def workload(tmp_path, n: int = 2, first: int = 0, name: str = "w.jsonl") -> str:
    p = tmp_path / name
    p.write_text("# a comment\n\n" + "".join(json.dumps(ask(i, 3)) + "\n" for i in range(first, first + n)))
    return str(p)


def test_stack_lifecycle_through_the_cli(cli, tmp_path):
    node = f"node-{cli.selected}"
    w = workload(tmp_path)
    served = cli.ok("stack", "serve", "--stack", "1", "--workload", w)  # the node is found from the stack
    assert (served["node_small_id"], served["served"], served["refused"]) == (cli.selected, 2, 0)
    assert served["usage"]["used_units"] == served["units_charged"] == sum(o["units"] for o in served["outcomes"])
    assert served["usage"]["units_left"] == 100_000 - served["units_charged"]
    assert (served["already_served"], served["already_refused"], served["failed"]) == (0, 0, 0)
    # the same workload again: every line was served, nothing is served or charged twice
    human = cli.human("stack", "serve", "--stack", "1", "--workload", w, "--node", node)
    assert "0 of 2 request(s) served" in human.stdout and "2 done before (2 served, 0 refused)" in human.stdout
    assert f"{served['usage']['units_left']} left of 100000" in human.stdout
    human = cli.human("stack", "serve", "--stack", "1", "--workload", workload(tmp_path, 2, 2, "w2.jsonl"), "--node", node)
    assert "2 of 2 request(s) served" in human.stdout and "done before" not in human.stdout

    usage = cli.ok("stack", "usage", "--stack", "1")
    assert usage["num_requests"] == 4 and usage["state"] == "open"
    stacks = cli.ok("node", "stacks", "--node", node)
    assert [s["stack_small_id"] for s in stacks["stacks"]] == [1]

    export = tmp_path / "stack-1.jsonl"
    history = cli.ok("stack", "history", "--stack", "1", "--export", str(export))
    assert history["num_requests"] == 4 and len(history["entries"]) == 4 and export.exists()
    commitment = cli.ok("stack", "commit", "--stack", "1")
    assert commitment["root"] == history["root"]
    assert commitment["num_claimed_compute_units"] == usage["used_units"] == history["units"]
    assert commitment["position"] == 0 and commitment["cross_validation_extra_nodes_count"] == 1

    own = cli.ok("stack", "replay", "--stack", "1")
    assert own["equal"] and own["replayed_root"] == history["root"]
    from_file = cli.ok("stack", "replay", "--stack", "1", "--history", str(export))
    assert from_file["equal"] and from_file["num_requests"] == 4

    settled = cli.ok("stack", "try-settle", "--stack", "1")
    assert settled["committed_stack_proof"] == commitment["committed_stack_proof"]
    assert settled["transaction"]["status"] == "success"
    (attester,) = settled["requested_attestation_nodes"]
    ticket = cli.ok("db", "get-ticket", "--stack-small-id", "1")
    assert ticket["num_claimed_compute_units"] == commitment["num_claimed_compute_units"]
    again = cli.ok("stack", "try-settle", "--stack", "1")
    assert again["already_settled"] and again["transaction"] is None

    # the stack takes no more requests (refused before loading the engine)
    err = cli.fail("stack", "serve", "--stack", "1", "--workload", w)
    assert err["kind"] == "StackSettling" and err["type"] == "stack_in_settlement"

    # a forged copy of the history does not import
    forged = tmp_path / "forged.jsonl"
    lines = export.read_text().splitlines()
    doc = json.loads(lines[1])
    doc["response"]["choices"][0]["message"]["content"] = "forged"
    forged.write_text("\n".join([lines[0], json.dumps(doc), *lines[2:]]) + "\n")
    err = cli.fail("stack", "attest", "--stack", "1", "--history", str(forged), "--node", f"node-{attester}")
    assert err["kind"] == "InvalidHistory" and "response hash" in err["message"]

    attested = cli.ok("stack", "attest", "--stack", "1", "--history", str(export), "--node", f"node-{attester}")
    assert attested["replay"]["equal"] and attested["history_matches_ticket"]
    assert attested["position"] == 1 and not attested["disputed"] and attested["attestations_complete"]


def test_cli_serving_errors(cli, tmp_path):
    w = workload(tmp_path, 1)
    err = cli.fail("stack", "serve", "--stack", "9", "--workload", w)
    assert err["kind"] == "NotFound"
    other = "node-2" if cli.selected == 1 else "node-1"
    err = cli.fail("stack", "serve", "--stack", "1", "--workload", w, "--node", other)
    assert err["kind"] == "StackNotServedHere" and f"this is node {3 - cli.selected}" in err["message"]
    err = cli.fail("stack", "commit", "--stack", "1", "--node", other)
    assert err["kind"] == "NothingToCommit"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": []}\n')
    err = cli.fail("stack", "serve", "--stack", "1", "--workload", str(bad))
    assert err["kind"] == "InvalidWorkload" and ":2:" in err["message"]
    err = cli.fail("stack", "serve", "--stack", "1", "--workload", w, "--engine", "bogus")
    assert err["kind"] == "InvalidArgument"
    err = cli.fail("stack", "replay", "--stack", "1", "--history", str(tmp_path / "missing.jsonl"))
    assert err["kind"] == "FileNotFound" and "missing.jsonl does not exist" in err["message"]  # checked before acting
    err = cli.fail("stack", "attest", "--stack", "1", "--history", w, "--node", other)
    assert err["kind"] == "InvalidHistory"
    assert cli.invoke("stack", "serve", "--workload", w).exit_code == 2  # --stack is required
    assert cli.invoke("node", "serve").exit_code == 2  # --node is required
    err = cli.fail("node", "serve", "--node", "node-1", "--port", "1", "--task-model", "meta-llama/Llama-3.3-70B")
    assert err["kind"] == "InvalidArgument" and "--task-model is for --engine openai" in err["message"]
    # nothing was charged by any of it
    assert cli.fail("stack", "commit", "--stack", "1")["kind"] == "NothingToCommit"


def test_stack_serve_is_resumable_and_shows_what_it_skipped(stub_cli, tmp_path):
    """A refused line (a model the node does not serve) is recorded: the re-run neither fails nor charges again,
    and says what was done before; --batch-size is still taken (deprecated) and means --concurrency."""
    p = tmp_path / "refusing.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in [ask(0, 3), ask(1, 3, model="gpt-4o"), ask(2, 3), ask(3, 3)]))
    first = stub_cli.ok("stack", "serve", "--stack", "1", "--workload", str(p), "--concurrency", "3")
    assert (first["served"], first["refused"], first["failed"], first["already_served"], first["already_refused"]) == (3, 1, 0, 0, 0)
    assert first["concurrency"] == 3 and first["workload_id"].startswith("wl-")
    assert [o["index"] for o in first["outcomes"]] == [0, 1, 2, 3]
    refused = first["outcomes"][1]
    assert not refused["ok"] and refused["error"]["type"] == "invalid_request_error" and refused["retry"] is False
    assert first["usage"]["used_units"] == first["units_charged"] == sum(o.get("units", 0) for o in first["outcomes"]) > 0

    human = stub_cli.human("stack", "serve", "--stack", "1", "--workload", str(p))
    assert "0 of 4 request(s) served, 0 refused, 4 done before (3 served, 1 refused); 0 compute units charged" in human.stdout
    again = stub_cli.ok("stack", "serve", "--stack", "1", "--workload", str(p), "--batch-size", "2")
    assert (again["served"], again["refused"], again["already_served"], again["already_refused"]) == (0, 0, 3, 1)
    assert (again["concurrency"], again["units_charged"], again["outcomes"]) == (2, 0, [])
    assert again["usage"]["used_units"] == first["units_charged"] and again["usage"]["num_requests"] == 3
    assert "deprecated" in stub_cli.human("stack", "serve", "--stack", "1", "--workload", str(p), "--batch-size", "2").stderr
    assert stub_cli.fail("stack", "serve", "--stack", "1", "--workload", str(p), "--concurrency", "0")["kind"] == "InvalidArgument"
    assert "--concurrency" in stub_cli.invoke("stack", "serve", "--help").stdout
    node_help = stub_cli.invoke("node", "serve", "--help").stdout
    assert "--max-pending" in node_help and "--max-batch" not in node_help
    assert stub_cli.fail("node", "serve", "--node", "node-1", "--max-pending", "0")["kind"] == "InvalidArgument"


def test_stack_serve_shows_a_progress_bar_on_a_terminal_only(stub_cli, tmp_path):
    w = workload(tmp_path, 3)
    bar = stub_cli.runner.invoke(app, ["--home", str(stub_cli.home), "stack", "serve", "--stack", "1", "--workload", w],
                                 env={"ATOMA_OPS_HOME": None, "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"})
    assert bar.exit_code == 0, bar.stderr
    assert "3/3" in bar.stderr and "3 served, 0 refused" in bar.stderr  # the bar's last state, before it is erased
    assert "3 of 3 request(s) served" in bar.stdout and "3/3" not in bar.stdout
    quiet = stub_cli.runner.invoke(app, ["--home", str(stub_cli.home), "--json", "stack", "serve", "--stack", "1",
                                         "--workload", w], env={"ATOMA_OPS_HOME": None, "TTY_COMPATIBLE": "1"})
    assert quiet.exit_code == 0 and quiet.stderr == "" and json.loads(quiet.stdout)["already_served"] == 3


# ``atoma-ops`` in a child process, the stub engine patched in for ``load_engine``.
CLI_SCRIPT = STUB_ENGINE_SRC + """
import sys
import atoma_ops.serving.node as node
node.load_engine = lambda kind="cpu", **kw: StubEngine()
from atoma_ops.cli import app
app(sys.argv[1:], prog_name="atoma-ops")
"""


def test_stack_serve_killed_mid_workload_resumes_and_charges_what_a_clean_run_does(stub_cli, tmp_path):
    """The issue's case: ``stack serve`` killed (SIGKILL after the third recorded request) and run again serves
    only the rest: the stack is charged what an uninterrupted run charges another stack, not more."""
    from atoma_ops.core.failpoints import FAILPOINTS_ENV

    w = workload(tmp_path, 10)
    tx = stub_cli.ok("db", "acquire-new-stack-entry", "--task-small-id", "1", "--num-compute-units", "100000", "--price",
                     "1000000", address="user")
    clean = sid(event(tx, "StackCreatedEvent")["stack_small_id"])
    reference = stub_cli.ok("stack", "serve", "--stack", str(clean), "--workload", w)
    assert reference["served"] == 10

    env = {k: v for k, v in os.environ.items() if k != "ATOMA_OPS_HOME"}
    env.update(PYTHONPATH=str(REPO), **{FAILPOINTS_ENV: "serve:after-record@3"})
    killed = subprocess.run(
        [sys.executable, "-c", CLI_SCRIPT, "--home", str(stub_cli.home), "--json", "stack", "serve", "--stack", "1",
         "--workload", w, "--concurrency", "2"], env=env, capture_output=True, text=True, timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL and killed.stdout == "", killed.stderr[-3000:]
    wait_out_leases(stub_cli.home)  # what the killed run had reserved (its request in flight) is released after its lease
    before = {int(e["request_id"].rsplit("-", 1)[1]) for e in stub_cli.ok("stack", "history", "--stack", "1")["entries"]}
    assert 3 <= len(before) < 10

    resumed = stub_cli.ok("stack", "serve", "--stack", "1", "--workload", w, "--concurrency", "2")
    done = len(before)
    assert (resumed["served"], resumed["already_served"], resumed["refused"]) == (10 - done, done, 0)
    # the node records requests as they end, not in the file's order: the re-run sends what the history lacks
    assert [o["index"] for o in resumed["outcomes"]] == sorted(set(range(10)) - before)
    usage = resumed["usage"]
    assert (usage["used_units"], usage["num_requests"], usage["reserved_units"], usage["in_flight"]) == (
        reference["units_charged"], 10, 0, 0)
    # the same requests and answers as the clean run's, each once (the order, and so the root, is the node's own)
    recorded = {s: stub_cli.ok("stack", "history", "--stack", s) for s in ("1", str(clean))}
    leaves = {s: sorted((e["request_id"], e["leaf"], e["units"]) for e in h["entries"]) for s, h in recorded.items()}
    assert leaves["1"] == leaves[str(clean)] and len(leaves["1"]) == 10
    assert stub_cli.ok("stack", "commit", "--stack", "1")["root"] == recorded["1"]["root"]


def test_stack_serve_url_sends_to_a_running_node_as_the_stacks_buyer(stub_cli, tmp_path):
    """``--url``: the workload goes to a node already running (here a server in this process); the command checks
    on chain that the server's address holds the stack's node badge, and signs as the stack's owner (or --buyer)."""
    import asyncio

    from atoma_ops.serving.node import NodeService
    from atoma_ops.serving.server import BackgroundServer, create_app

    w = workload(tmp_path, 3)
    selected, other = f"node-{stub_cli.selected}", f"node-{3 - stub_cli.selected}"
    services = {n: asyncio.run(NodeService.open(stub_cli.home, n, stub_engine())) for n in (selected, other)}
    try:
        with BackgroundServer(create_app(services[selected])) as node, BackgroundServer(create_app(services[other])) as wrong:
            first = stub_cli.ok("stack", "serve", "--stack", "1", "--workload", w, "--url", node.url + "/v1")
            assert (first["served"], first["refused"], first["node_small_id"]) == (3, 0, stub_cli.selected)
            assert first["buyer"] == stub_cli.aliases["user"]  # the stack's owner, as the chain says
            assert {o["signed_by"] for o in first["outcomes"]} == {services[selected].address}
            assert first["usage"]["used_units"] == first["units_charged"] > 0
            again = stub_cli.ok("stack", "serve", "--stack", "1", "--workload", w, "--url", node.url)
            assert (again["served"], again["already_served"], again["units_charged"], again["outcomes"]) == (0, 3, 0, [])
            # another address signs: the node refuses every line as not its stack's owner's, nothing charged
            stolen = stub_cli.ok("stack", "serve", "--stack", "1", "--workload", workload(tmp_path, 2, 5, "w2.jsonl"),
                                 "--url", node.url, "--buyer", other)
            assert (stolen["served"], stolen["refused"], stolen["units_charged"]) == (0, 2, 0)
            assert {o["error"]["type"] for o in stolen["outcomes"]} == {"stack_not_found"}
            # a server that is not the stack's node is not sent anything
            err = stub_cli.fail("stack", "serve", "--stack", "1", "--workload", w, "--url", wrong.url)
            assert err["kind"] == "ResponseSignatureError" and "NodeBadge" in err["message"]
            assert stub_cli.fail("stack", "serve", "--stack", "1", "--workload", w, "--url", node.url, "--node",
                                 selected)["kind"] == "InvalidArgument"
        assert services[selected].store.usage(1).num_requests == 3 and services[other].store.usage(1) is None
    finally:
        for service in services.values():
            asyncio.run(service.close())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(not SCRIPT.exists(), reason="the atoma-ops console script is not installed")
def test_node_serve_console_script(tmp_path):
    """The real command: loads the CPU engine, serves HTTP on loopback, stops cleanly on SIGINT."""
    c = Cli(tmp_path / "home")
    c.ok("localnet", "init", "--seed", "1")
    c.ok("usdc", "mint", "--amount", "10000000", "--to", "user")
    c.ok("db", "create-task-entry", "--role", "0", "--is-public")
    c.ok("db", "register-node", address="node-1")
    c.ok("db", "subscribe-node-to-task", "--task-small-id", "1", "--price-per-one-million-compute-units", "1000000",
         address="node-1")
    c.ok("db", "acquire-new-stack-entry", "--task-small-id", "1", "--num-compute-units", "5000", "--price", "1000000",
         address="user")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "ATOMA_OPS_HOME"}
    proc = subprocess.Popen(
        [str(SCRIPT), "--home", str(c.home), "node", "serve", "--node", "node-1", "--port", str(port), "--max-pending", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.25)
        owner = RequestSigner(Wallet.load(LocalnetHome(c.home).client_yaml), "user")  # the stack's buyer signs
        body = json.dumps(ask(0, 3)).encode()
        r = httpx.post(url + "/v1/chat/completions", content=body, headers=signed_headers(owner, 1, body), timeout=60)
        assert r.status_code == 200, r.text
        units = int(r.headers["X-Compute-Units"])
        assert httpx.get(url + "/v1/stacks/1/usage").json()["used_units"] == units
        unsigned = httpx.post(url + "/v1/chat/completions", json=ask(0, 3), headers={"X-Stack-Small-Id": "1"})
        assert unsigned.status_code == 400 and unsigned.json()["error"]["type"] == "invalid_signature_header"
        bad = httpx.post(url + "/v1/chat/completions", content=b"nope", headers=signed_headers(owner, 1, b"nope"))
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode in (0, 130), err  # uvicorn re-raises the SIGINT after a clean shutdown: 128 + 2
    assert "serving on http://127.0.0.1" in err and "at most 4 requests in progress" in err
    history = c.ok("stack", "history", "--stack", "1")
    assert history["num_requests"] == 1 and history["units"] == units
