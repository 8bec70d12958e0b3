"""Several hosts of one operator on this machine, for real: PostgreSQL (Debian's binaries, a throwaway cluster), a
``prefect server start`` whose database is that PostgreSQL, and per host a ``prefect worker`` on its own work queue,
each with its own ``PREFECT_HOME`` and localnet home (its node stores), each in a network namespace of its own where
the machine allows it (``atoma_ops.testing.netns``; else plain processes, and ``mode`` says so). A host's node server
(the node's real HTTP server on the stub engine) runs in the host's namespace too.

Used by ``tests/flows/test_multi_host.py`` and ``bench/scale_out.py``. Every process started is stopped and every
namespace removed on :meth:`Cluster.close`, whatever failed.

The chain: one localnet file, shared by every host's home through a link (the localnet is safe for several
processes: SQLite in WAL mode), standing in for the Sui network all hosts talk to.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path


from atoma_ops.home import LocalnetHome
from atoma_ops.testing.netns import Hosts
from atoma_ops.testing.postgres import PgCluster
from tests.flows.prefect_server import PREFECT, ROOT, PrefectServer, prefect_env, start, stop, tail

POOL = "atoma-ops"
#: server services these runs never need (they would only take CPU from the runs on a small machine): the runs are
#: created by the test, no automation is installed, nothing is paused, cancelled or left to expire
IDLE_SERVICES = ("cancellation_cleanup", "db_vacuum", "foreman", "late_runs", "pause_expirations",
                 "cleanup_reconciler", "triggers", "repossessor")
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
PRICE = 1_000_000  # USDC base units per million compute units: one base unit a unit
WALLET_FILES = ("client.yaml", "sui.keystore", "sui.aliases")
#: what each workload line sends: the stub engine counts 10 + 4 per message + 2 words = 16 prompt tokens, and
#: answers 3 tokens: 19 compute units a request
REQUEST = {"messages": [{"role": "user", "content": "say hi"}], "max_tokens": 3}
UNITS_PER_REQUEST = 19


@dataclass
class Localnet:
    """The shared chain: ``stacks[node]`` the stacks sold to each node (one task per node, so each stack's node is
    known), ``node_ids[node]`` its small id; ``setup_txs`` how many transactions the setup executed."""

    home: Path
    stacks: dict[str, list[int]]
    node_ids: dict[str, int]
    setup_txs: int


async def _operator_chain(home: Path, nodes: list[str], stacks_per_node: int, units: int) -> Localnet:
    lh = LocalnetHome(home)
    localnet, _ = lh.init(seed=11, force=True, aliases=("admin", "user", *nodes))
    localnet.close()
    chain = lh.open()
    try:
        admin, user = chain.wallet.resolve("admin"), chain.wallet.resolve("user")
        await chain.faucet_mint(user, len(nodes) * stacks_per_node * units * PRICE // 1_000_000)
        stacks: dict[str, list[int]] = {}
        node_ids: dict[str, int] = {}
        for node in nodes:
            address = chain.wallet.resolve(node)
            tx = await chain.create_task_entry(admin, role=0, model_name="stub", security_level=0)
            task = int(tx.event("TaskRegisteredEvent").parsed_json["task_small_id"]["inner"])
            tx = await chain.register_node_entry(address)
            node_ids[node] = int(tx.event("NodeRegisteredEvent").parsed_json["node_small_id"]["inner"])
            await chain.subscribe_node_to_task(address, task_small_id=task, price_per_one_million_compute_units=PRICE)
            stacks[node] = []
            for _ in range(stacks_per_node):
                tx = await chain.acquire_new_stack_entry(user, task_small_id=task, num_compute_units=units,
                                                         price=PRICE)
                stacks[node].append(int(tx.event("StackCreatedEvent").parsed_json["stack_small_id"]["inner"]))
    finally:
        await chain.close()
    return Localnet(home, stacks, node_ids, len(chain_transactions(home)))


def operator_chain(home: Path, nodes: list[str], stacks_per_node: int, units: int = 1_000) -> Localnet:
    """A fresh localnet in ``home`` whose wallet holds ``admin``, ``user`` and ``nodes``: ``user`` funded, and for
    each node a task, the node registered and subscribed, and ``stacks_per_node`` stacks of ``units`` bought on
    it. Nothing served yet."""
    return asyncio.run(_operator_chain(Path(home), nodes, stacks_per_node, units))


def record_served(home: Path, chain: Localnet, node: str, requests: int) -> None:
    """``requests`` recorded responses on each of ``node``'s stacks, written into its store under ``home`` as serving
    leaves them (``atoma_ops.testing.served``): for the benchmark, whose subject is settlement, not serving."""
    from atoma_ops.serving.store import NodeStore, Settlement, StackFacts
    from atoma_ops.testing.served import recorded_response

    async def facts() -> list:
        ch = LocalnetHome(home).open()
        try:
            return [StackFacts.of(await ch.get_stack(s)) for s in chain.stacks[node]]
        finally:
            await ch.close()

    with NodeStore(NodeStore.path_for(home, node)) as store:
        store.bind_node(chain.node_ids[node], node)
        pairs = [(f, recorded_response(f.stack_small_id, i)) for f in asyncio.run(facts()) for i in range(requests)]
        reservations = store.reserve([(f, 20) for f, _ in pairs])
        store.settle([Settlement(r, req, resp) for r, (_, (req, resp)) in zip(reservations, pairs)])


def host_home(shared: Path, home: Path) -> Path:
    """A host's own localnet home: its node stores are its own; the chain and the wallet are the shared ones (links)."""
    home.mkdir(parents=True, exist_ok=True)
    lh = LocalnetHome(shared)
    for name in (lh.chain_file.name, *WALLET_FILES):
        if (shared / name).exists():
            (home / name).symlink_to((shared / name).resolve())
    return home


def chain_transactions(home: Path) -> list[dict]:
    """Every transaction the localnet executed, in order: digest, sender, status (read-only)."""
    import sqlite3

    con = sqlite3.connect(f"file:{LocalnetHome(home).chain_file}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT seq, digest, sender, status FROM transactions ORDER BY seq").fetchall()
    finally:
        con.close()
    return [{"seq": s, "digest": d, "sender": snd, "status": st} for s, d, snd, st in rows]


def serve_stacks(url: str, client_yaml: Path, node_address: str, stacks: list[int], requests: int) -> int:
    """``requests`` lines on each stack, sent to the node's server at ``url`` as the stack's buyer (``user``) sends
    them: signed, each answer's signature checked. Returns the compute units charged."""
    from atoma_ops.client import RequestSigner
    from atoma_ops.lifecycle import serve_workload
    from atoma_ops.wallet import Wallet

    signer = RequestSigner(Wallet.load(client_yaml), "user")

    async def go() -> int:
        charged = 0
        for stack in stacks:
            report, _ = await serve_workload(url, signer, stack, [REQUEST] * requests, concurrency=4,
                                             node_address=node_address)
            assert not report.refused and not report.failed, report
            charged += report.units_charged
        return charged

    return asyncio.run(go())


@dataclass
class Cluster:
    """``Cluster(folder, ["host-a", "host-b"]).start()``: the hosts' network, PostgreSQL (databases ``prefect`` and
    ``journal``) and the Prefect server on it (starting; :meth:`wait` for it), the ``atoma-ops`` process pool once
    it answers. Then :meth:`node_server`, :meth:`worker`, :meth:`deploy`, :meth:`run`, :meth:`wait_runs`."""

    folder: Path
    host_names: list[str]
    netns: bool = True
    fsync: bool = False
    #: the pool's job command: Prefect's engine started directly (``python -m prefect.engine``, which runs the
    #: deployment's pull steps and the flow), instead of the process worker's default, a workspace supervisor that
    #: prepares the same working directory and then replaces itself with that engine: one Python start-up (importing
    #: Prefect, seconds on a small machine) less per run
    engine_command: bool = False
    hosts: Hosts | None = None
    pg: PgCluster | None = None
    server: PrefectServer | None = None
    journal_url: str = ""
    logs: dict[str, Path] = field(default_factory=dict)
    _stack: ExitStack = field(default_factory=ExitStack)
    _procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def mode(self) -> str:
        return self.hosts.mode if self.hosts else "not started"

    def start(self) -> "Cluster":
        try:
            self.hosts = Hosts.open(self.host_names, netns=self.netns)
            self._stack.callback(self.hosts.close)
            self.pg = PgCluster(fsync=self.fsync, listen=self.hosts.server_address, trust=self.hosts.subnet)
            self.pg.start()
            self._stack.callback(self.pg.stop)
            prefect_db = self.pg.create_database("prefect")
            self.journal_url = self.pg.create_database("journal")
            self.server = PrefectServer(
                self.folder / "server",
                extra_env={"PREFECT_API_DATABASE_CONNECTION_URL": prefect_db.replace("postgresql://", "postgresql+asyncpg://"),
                           **{f"PREFECT_SERVER_SERVICES_{s.upper()}_ENABLED": "false" for s in IDLE_SERVICES}},
                host=self.hosts.server_address,
            )
            self.server.start()
            self._stack.callback(self.server.stop)
        except BaseException:
            self.close()
            raise
        return self

    def wait(self) -> "Cluster":
        """The server answers; the process work pool exists (made as ``prefect work-pool create atoma-ops --type
        process`` makes it, through the API: the CLI's start-up costs seconds here)."""
        from prefect.workers.process import ProcessWorker

        self.server.wait()
        template = ProcessWorker.get_default_base_job_template()
        if self.engine_command:
            template["variables"]["properties"]["command"]["default"] = f"{sys.executable} -m prefect.engine"
        self.server.api.post("/work_pools/", json={
            "name": POOL, "type": "process", "base_job_template": template,
        }).raise_for_status()
        return self

    def deployment(self, name: str, entrypoint: str, queue: str) -> dict:
        """A deployment of the flow at ``entrypoint`` on the pool's queue ``queue``, made through the API as ``prefect
        deploy`` makes one from the repository root (the same pull step: work in the checkout), without its
        start-up (importing Prefect and every flow, seconds on a small machine). No schedule, no concurrency limit."""
        api = self.server.api
        flow_id = api.post("/flows/", json={"name": name}).raise_for_status().json()["id"]
        return api.post("/deployments/", json={
            "name": name, "flow_id": flow_id, "entrypoint": entrypoint, "path": str(ROOT),
            "work_pool_name": POOL, "work_queue_name": queue,
            "pull_steps": [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}],
        }).raise_for_status().json()

    def env(self, prefect_home: Path, **extra: str) -> dict[str, str]:
        prefect_home.mkdir(parents=True, exist_ok=True)
        return {**prefect_env(prefect_home, self.server.api_url), **extra}

    def _start(self, name: str, argv: list[str], env: dict[str, str], host: str | None,
               grace: float = 10.0) -> subprocess.Popen:
        log = self.folder / f"{name}.log"
        self.logs[name] = log
        wrapped = self.hosts[host].wrap(argv) if host else argv
        proc = start(wrapped, env, log)
        self._procs.append(proc)
        self._stack.callback(stop, proc, grace)
        return proc

    def node_server(self, host: str, home: Path, node: str, timeout: float = 60) -> dict:
        """The node's HTTP server in ``host``'s namespace, on its address; ``{"url", "address"}`` once it listens."""
        name = f"node-{host}"
        proc = self._start(name, [sys.executable, "-m", "atoma_ops.testing.node_host", "--home", str(home),
                                  "--node", node, "--host", self.hosts[host].address], dict(os.environ), host)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.logs[name].read_text(errors="replace").splitlines():
                if line.startswith('{"url"'):
                    return json.loads(line)
            assert proc.poll() is None, f"the node server of {host} exited:\n{tail(self.logs[name])}"
            time.sleep(0.1)
        raise AssertionError(f"the node server of {host} did not start in {timeout} s:\n{tail(self.logs[name])}")

    def worker(self, name: str, queues: list[str], host: str | None, **env: str) -> subprocess.Popen:
        """``prefect worker start --pool atoma-ops --work-queue …`` named ``name``, in ``host``'s namespace (None: the
        machine's own, where the server runs), with its own PREFECT_HOME and the shared journal."""
        argv = [*PREFECT, "worker", "start", "--pool", POOL, "--name", name]
        for queue in queues:
            argv += ["--work-queue", queue]
        environment = self.env(self.folder / name / "prefect-home", ATOMA_OPS_JOURNAL_URL=self.journal_url, **env)
        # a worker told to stop finishes what it runs, then may spend many seconds closing its connections (in a
        # namespace, often until ``stop`` kills it): by then every run the caller waited for is over, so 3 s
        return self._start(name, argv, environment, host, grace=3.0)

    def deploy(self, *args: str) -> subprocess.Popen:
        """``prefect deploy …`` from the repository root (started; ``.wait()`` on it)."""
        log = self.folder / f"deploy-{len(self.logs)}.log"
        self.logs[log.stem] = log
        return start([*PREFECT, "--no-prompt", "deploy", *args], self.server.env, log)

    def run(self, deployment: str, parameters: dict) -> str:
        """A flow run of ``flow/deployment`` with ``parameters`` (as ``prefect deployment run --param`` sends them);
        its id."""
        api = self.server.api
        dep = api.get(f"/deployments/name/{deployment}").raise_for_status().json()
        run = api.post(f"/deployments/{dep['id']}/create_flow_run", json={"parameters": parameters})
        return run.raise_for_status().json()["id"]

    def wait_runs(self, ids: list[str], timeout: float = 180) -> dict[str, dict]:
        """Each flow run, once all are terminal."""
        api = self.server.api
        deadline = time.monotonic() + timeout
        runs: dict[str, dict] = {}
        while time.monotonic() < deadline:
            runs = {i: api.get(f"/flow_runs/{i}").raise_for_status().json() for i in ids}
            if all(r["state_type"] in TERMINAL for r in runs.values()):
                return runs
            time.sleep(0.3)
        raise AssertionError(f"flow runs not finished in {timeout} s: "
                             f"{ {i: r['state_type'] for i, r in runs.items()} }\n{self.tails()}")

    def tails(self, n: int = 3000) -> str:
        return "\n".join(f"--- {name}:\n{tail(log, n)}" for name, log in self.logs.items())

    def close(self) -> None:
        # every node server and worker is told to stop at once, so their shutdowns overlap (a worker may take
        # seconds, up to ``stop``'s timeout); then each is stopped for good, the server and PostgreSQL last
        for proc in self._procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        self._stack.close()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

