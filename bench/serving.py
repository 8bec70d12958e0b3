"""The node's own ceiling: a concurrency sweep, node vs bare engine, side by side in one run.

    .venv/bin/python bench/serving.py                                  # (a) stand-in + (b) CPU engine
    .venv/bin/python bench/serving.py --only standin --concurrency 1,8,64,256
    .venv/bin/python bench/serving.py --vllm-url http://127.0.0.1:8001/v1 --vllm-model M   # (c) a real vllm serve

For each concurrency C, C clients each send ``--rounds`` streamed chat requests one after another (at least
``--min-requests`` in all: more rounds at low C; the official OpenAI wire format, SSE, parsed by httpx), first
straight to the engine ("bare"), then through the node ("node": admission, the reservation, the relay, the charge and
the history append), alternating which goes first from one C to the next. The clients start spread over one engine
latency (``--spread``): requests then arrive as independent users' do, not all at one instant, which a fixed-latency
stand-in would otherwise keep in lockstep for the whole run (``--spread 0`` for that). Printed per C: requests/s,
p50/p99 time to first token (first content chunk), the ratios, and (for a node in its own process, on Linux) the node
process's CPU time per request, the figure the box's other load moves least.

The node runs on a core of its own (``--pin``, the default where there are 2+ cores): the clients and the engine share
the others on both sides, so the ratio says whether the node keeps pace with what they push through, which is what
"the node's own ceiling" means on a box too small to give the client and the engine unlimited room. ``--no-pin``
lets all three share every core: then at high C the ratio measures the node's share of a saturated box.

- **(a) stand-in**: ``atoma_ops.testing.openai_standin`` in its own process — NOT a model: a fixed per-request
  latency (``--latency``, 0.5 s) and unlimited concurrency, so it measures the node's own ceiling, never an
  engine's. The node is the real ``atoma-ops node serve --engine openai`` in its own process, in front of it. Goals:
  node/bare >= 0.9x requests/s at every C, and p50 first-token overhead <= 5 ms.
- **(b) the CPU engine** (SmolLM2 on CPU torch): bare = ``engine.stream`` in this process; node = the HTTP server
  around the same loaded engine in a thread of this process. Lower concurrencies only (``--cpu-concurrency``).
- **(c) ``vllm serve``** (e.g. from ``make test-vllm``'s environment) when ``--vllm-url`` is given: bare = straight
  to it, node = ``atoma-ops node serve --engine openai`` in front of it.

The machine is shared (2 cores here): the client, the node and the engine compete for them, as they would on one
host; the stand-in's own process costs CPU too. Figures are medians of one run; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]

from atoma_ops.protocol.events import small_id  # noqa: E402
from atoma_ops.home import LocalnetHome  # noqa: E402
from atoma_ops.testing.openai_standin import STANDIN_MODEL, save_tokenizer  # noqa: E402

PRICE = 1_000_000
GOAL_RATIO = 0.9
GOAL_TTFT_MS = 5.0
QUESTIONS = ["What is the capital of France?", "Name three primary colors.", "Why is the sky blue?",
             "Give me a word that rhymes with cat.", "What is two plus two?", "Say hello in Spanish."]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen | None, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{url}: the process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not come up in {timeout:.0f} s")


async def setup(home_dir: Path, model: str, units: int) -> tuple[LocalnetHome, int]:
    """A localnet with node-1 subscribed to a task of ``model`` and one stack of ``units`` sold to it."""
    home = LocalnetHome(home_dir)
    localnet, _ = home.init(seed=1)
    localnet.close()
    chain = home.open()
    try:
        await chain.faucet_mint(chain.wallet.resolve("user"), units * PRICE // 1_000_000 + 1_000_000)
        tx = await chain.create_task_entry("admin", role=0, model_name=model, security_level=0)
        task = small_id(tx.event("TaskRegisteredEvent").parsed_json["task_small_id"])
        await chain.register_node_entry("node-1")
        await chain.subscribe_node_to_task("node-1", task_small_id=task, price_per_one_million_compute_units=PRICE)
        tx = await chain.acquire_new_stack_entry("user", task_small_id=task, num_compute_units=units, price=PRICE)
        stack = small_id(tx.event("StackCreatedEvent").parsed_json["stack_small_id"])
    finally:
        await chain.close()
    return home, stack


# ------------------------------------------------------------------------------------------------ the client
def buyer(home: LocalnetHome):
    """The stack owner's signer (``user`` of the home's wallet)."""
    from atoma_ops.client import RequestSigner
    from atoma_ops.wallet import Wallet

    return RequestSigner(Wallet.load(home.client_yaml), "user")


async def one(client: httpx.AsyncClient, url: str, body: bytes, headers: dict) -> tuple[float, float]:
    """One streamed request: (seconds to the first content chunk, seconds to the end)."""
    t0 = time.perf_counter()
    first = None
    async with client.stream("POST", url, content=body, headers={"content-type": "application/json", **headers}) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if first is None and line.startswith("data: ") and '"content":"' in line and '"content":""' not in line:
                first = time.perf_counter() - t0
            # read on to the end of the body (past [DONE]): the connection then goes back to the pool
    end = time.perf_counter() - t0
    return (first if first is not None else end), end


async def sweep_point(url: str, model: str, concurrency: int, rounds: int, max_tokens: int,
                      headers: dict | None = None, signer=None, spread_s: float = 0.0) -> dict:
    """``signer`` (a RequestSigner): each body is signed by the stack's owner, before the clock starts (the node's
    side of a request is checking the signature, not making it). Client ``w`` starts ``spread_s * w / concurrency``
    seconds in: over one engine latency, the clients' requests then arrive spread out as independent users' do,
    not all at the same instant (a fixed-latency engine would otherwise keep them in lockstep for the whole run)."""
    # pools of at most 16 connections: httpx scans every connection of a pool on each request, which at hundreds of
    # connections in one pool makes the client, not the server, the bottleneck (measured: 18 vs 8.5 ms CPU each)
    pools = [httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=16, max_keepalive_connections=16))
             for _ in range((concurrency + 15) // 16)]

    nonce = os.urandom(3).hex()

    def request(w: int, r: int) -> tuple[bytes, dict]:
        body = {"model": model, "stream": True, "max_tokens": max_tokens,
                # a different text each time: nothing is served from the node's token-count cache
                "messages": [{"role": "user", "content": f"{QUESTIONS[(w + r) % len(QUESTIONS)]} (#{nonce}.{w}.{r})"}]}
        if signer is None:
            return json.dumps(body).encode(), dict(headers or {})
        raw, signature, _ = signer.sign(body)
        return raw, {**(headers or {}), "X-Signature": signature}

    prepared = [[request(w, r) for r in range(rounds)] for w in range(concurrency)]

    errors: list[str] = []

    async def worker(w: int) -> list[tuple[float, float]]:
        out = []
        if spread_s:
            await asyncio.sleep(spread_s * w / concurrency)
        for raw, h in prepared[w]:
            try:
                out.append(await one(pools[w // 16], url, raw, h))
            except httpx.TransportError as exc:  # e.g. a kept-alive connection the server closed as it was reused
                errors.append(f"{type(exc).__name__}: {exc}")
        return out

    try:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(worker(w) for w in range(concurrency)))
        wall = time.perf_counter() - t0
    finally:
        for pool in pools:
            await pool.aclose()
    ttft = sorted(t for rs in results for t, _ in rs)
    n = len(ttft)
    return {"requests": n, "errors": len(errors), "wall_s": wall, "rps": n / wall, "ttft_p50_ms": 1000 * statistics.median(ttft),
            "ttft_p99_ms": 1000 * ttft[min(n - 1, int(0.99 * n))]}


def cpu_seconds(pid: int | None) -> float | None:
    """CPU time (user + system) a process has used so far, from /proc (None elsewhere): the node's own cost per
    request, which the machine's other load changes far less than requests/s."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def compare(name: str, bare_url: str, node_url: str, model: str, levels: list[int], rounds: int, max_tokens: int,
            stack: int, signer, node_pid: int | None = None, *, min_requests: int = 0, spread_s: float = 0.0) -> list[dict]:
    print(f"\n## {name}")
    print(f"{'clients':>7} | {'bare req/s':>10} {'node req/s':>10} {'ratio':>6} | {'bare p50':>8} {'node p50':>8} "
          f"{'+p50 ms':>7} | {'bare p99':>8} {'node p99':>8}   (first token, ms) | node CPU ms/request")
    rows = []
    for i, c in enumerate(levels):
        pair = {}
        order = ("bare", "node") if i % 2 == 0 else ("node", "bare")
        for side in order:
            url = (bare_url if side == "bare" else node_url) + "/chat/completions"
            headers = {"X-Stack-Small-Id": str(stack)} if side == "node" else None
            before = cpu_seconds(node_pid) if side == "node" else None
            pair[side] = asyncio.run(sweep_point(url, model, c, max(rounds, -(-min_requests // c)), max_tokens,
                                                 headers, signer if side == "node" else None, spread_s))
            if before is not None:
                pair[side]["cpu_ms_per_request"] = 1000 * (cpu_seconds(node_pid) - before) / max(1, pair[side]["requests"])
        b, n = pair["bare"], pair["node"]
        row = {"engine": name, "clients": c, "bare": b, "node": n, "ratio": n["rps"] / b["rps"],
               "ttft_overhead_p50_ms": n["ttft_p50_ms"] - b["ttft_p50_ms"]}
        rows.append(row)
        print(f"{c:>7} | {b['rps']:>10.1f} {n['rps']:>10.1f} {row['ratio']:>6.2f} | {b['ttft_p50_ms']:>8.1f} "
              f"{n['ttft_p50_ms']:>8.1f} {row['ttft_overhead_p50_ms']:>7.1f} | {b['ttft_p99_ms']:>8.1f} "
              f"{n['ttft_p99_ms']:>8.1f}" + (f" | {n['cpu_ms_per_request']:>6.2f}" if "cpu_ms_per_request" in n else "")
              + (f"   transport errors: bare {b['errors']}, node {n['errors']} (not counted)"
                                            if b["errors"] or n["errors"] else ""))
    return rows


def node_process(home: Path, base_url: str, model: str, port: int, log: Path,
                 tokenizer: Path | None = None, cpus: set[int] | None = None) -> subprocess.Popen:
    cmd = [str(REPO / ".venv" / "bin" / "atoma-ops"), "--home", str(home), "node", "serve", "--node", "node-1",
           "--engine", "openai", "--openai-base-url", base_url, "--model", model, "--port", str(port),
           "--max-pending", "4096"]
    if tokenizer is not None:
        cmd += ["--tokenizer", str(tokenizer)]
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=REPO, preexec_fn=pin)


def run_openai(name: str, bare_url: str, model: str, tmp: Path, levels: list[int], rounds: int,
               max_tokens: int, tokenizer: Path | None = None, node_cpus: set[int] | None = None,
               **sweep: Any) -> list[dict]:
    slug = "".join(c if c.isalnum() else "-" for c in name.lower())
    home, stack = asyncio.run(setup(tmp / f"home-{slug}", model, 1_000_000))
    port = free_port()
    proc = node_process(home.path, bare_url, model, port, tmp / f"node-{slug}.log", tokenizer, node_cpus)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc)
        return compare(name, bare_url, f"http://127.0.0.1:{port}/v1", model, levels, rounds, max_tokens, stack,
                       buyer(home), node_pid=proc.pid, **sweep)
    finally:
        proc.terminate()
        proc.wait(30)


def run_cpu(tmp: Path, levels: list[int], rounds: int, max_tokens: int, **sweep: Any) -> list[dict]:
    from atoma_ops.serving.engines.base import SMOLLM2_MODEL
    from atoma_ops.serving.node import NodeService, load_engine
    from atoma_ops.serving.server import BackgroundServer, create_app
    from atoma_ops.testing.openai_standin import OpenAIServer

    t0 = time.perf_counter()
    engine = load_engine("cpu")
    print(f"\nCPU engine loaded in {time.perf_counter() - t0:.1f} s")
    home, stack = asyncio.run(setup(tmp / "home-cpu", SMOLLM2_MODEL, 1_000_000))
    service = asyncio.run(NodeService.open(home.path, "node-1", engine, max_pending=4096))
    bare = OpenAIServer(engine).start()  # the same engine behind a bare OpenAI front, in this process too
    node = BackgroundServer(create_app(service)).start()
    try:
        asyncio.run(sweep_point(bare.base_url + "/chat/completions", SMOLLM2_MODEL, 2, 1, max_tokens))  # warm-up
        return compare("cpu", bare.base_url, node.url + "/v1", SMOLLM2_MODEL, levels, rounds, max_tokens, stack,
                       buyer(home), **sweep)
    finally:
        node.stop()
        bare.stop()
        engine.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=("standin", "cpu", "vllm"), help="run one part")
    ap.add_argument("--concurrency", default="1,8,64,256", help="client counts for the stand-in and vLLM")
    ap.add_argument("--cpu-concurrency", default="1,8", help="client counts for the CPU engine")
    ap.add_argument("--rounds", type=int, default=4, help="requests per client, one after another")
    ap.add_argument("--cpu-rounds", type=int, default=2)
    ap.add_argument("--latency", type=float, default=0.5, help="the stand-in's per-request latency (s)")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--vllm-url", help="a running vllm serve's /v1 URL")
    ap.add_argument("--vllm-model", help="the model name it serves")
    ap.add_argument("--json", dest="json_out", help="also write the figures to this file")
    ap.add_argument("--min-requests", type=int, default=32,
                    help="at least this many requests per point (more rounds at low concurrency): a p50 of 4 is noise")
    ap.add_argument("--spread", type=float, default=None,
                    help="seconds over which the clients start (default: the stand-in's latency; 0: all at once)")
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                    help="the node on a core of its own, the clients and the engine on the others (default; Linux, "
                         "2+ cores); --no-pin: all three share every core")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    rows: list[dict] = []
    spread = args.latency if args.spread is None else args.spread
    sweep = {"min_requests": args.min_requests, "spread_s": spread}
    everything = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    node_cpus = None
    if args.pin and len(everything) >= 2:
        node_cpus = {max(everything)}
        os.sched_setaffinity(0, everything - node_cpus)  # this process (the clients) and the servers it starts
        print(f"pinned: the node on CPU {max(everything)}, the clients and the engine on CPUs "
              f"{sorted(everything - node_cpus)} (--no-pin: all on every CPU)")
    elif args.pin:
        print("not pinned: fewer than 2 CPUs to share out (or no sched_setaffinity here)")
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp_name:
        tmp = Path(tmp_name)
        if args.only in (None, "standin"):
            port = free_port()
            log = (tmp / "standin.log").open("w")
            standin = subprocess.Popen(
                [sys.executable, "-m", "atoma_ops.testing.openai_standin", "--port", str(port),
                 "--latency", str(args.latency)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
            )
            try:
                wait_http(f"http://127.0.0.1:{port}/health", standin)
                print(f"stand-in (a fixed {args.latency} s per request, unlimited concurrency; NOT a model) on :{port}")
                for tokenizer in (None, save_tokenizer(tmp / "standin-tokenizer")):
                    name = "standin, node counts via /tokenize" if tokenizer is None else \
                        "standin, node counts with --tokenizer (the model's own, locally)"
                    rows += run_openai(name, f"http://127.0.0.1:{port}/v1", STANDIN_MODEL, tmp, levels, args.rounds,
                                       args.max_tokens, tokenizer, node_cpus, **sweep)
            finally:
                standin.terminate()
                standin.wait(30)
        if node_cpus:
            os.sched_setaffinity(0, everything)  # the CPU engine's node runs in this process: every core again
        if args.only in (None, "cpu"):
            rows += run_cpu(tmp, [int(c) for c in args.cpu_concurrency.split(",")], args.cpu_rounds, args.max_tokens,
                            min_requests=0, spread_s=0.0)
        if args.vllm_url and args.only in (None, "vllm"):
            rows += run_openai("vllm", args.vllm_url.rstrip("/"), args.vllm_model or "", tmp, levels, args.rounds,
                               args.max_tokens, **sweep)  # a real server (its own machine or GPU): nothing pinned
        elif args.only in (None, "vllm"):
            print("\n## vllm: skipped (no --vllm-url; `make test-vllm` builds the environment that runs one)")
    for name in dict.fromkeys(r["engine"] for r in rows if r["engine"].startswith("standin")):
        mine = [r for r in rows if r["engine"] == name]
        ratios = " / ".join(f"{r['ratio']:.2f}" for r in mine)
        overheads = " / ".join(f"{r['ttft_overhead_p50_ms']:+.1f}" for r in mine)
        clients = "/".join(str(r["clients"]) for r in mine)
        met = "met" if min(r["ratio"] for r in mine) >= GOAL_RATIO else "MISSED"
        late = [str(r["clients"]) for r in mine if r["ttft_overhead_p50_ms"] > GOAL_TTFT_MS]
        ttft = "met" if not late else f"MISSED at {'/'.join(late)} clients"
        print(f"\n{name}: node/bare {ratios} at {clients} clients (goal >= {GOAL_RATIO} at every C: {met}); "
              f"p50 first-token overhead {overheads} ms (goal <= {GOAL_TTFT_MS:.0f} at every C: {ttft})")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
