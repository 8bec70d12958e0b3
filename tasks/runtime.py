"""What every task shares: the retry policy, and opening the core's clients from the blocks."""

from __future__ import annotations

import os
import threading
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from atoma_ops.core.errors import ErrorClass, classify
from atoma_ops.core.failpoints import FAILPOINT_TRACE_ENV, FAILPOINTS_ENV, failpoint

from blocks import AtomaNetwork, InferenceEngine, Ledger, SuiWallet


def retry_if_not_terminal(task: Any, task_run: Any, state: Any) -> bool:
    """Retry retryable and in-doubt errors (an in-doubt write is resolved by digest on the retry); never a
    terminal one (a Move abort, a bad argument)."""
    exc = state.data if isinstance(getattr(state, "data", None), BaseException) else None
    if exc is None:
        try:
            state.result()
        except BaseException as raised:  # noqa: BLE001 - we classify it
            exc = raised
        else:
            return False
    return classify(exc) is not ErrorClass.TERMINAL


def _step_boundary(event: str):
    def hook(step: Any, run: Any, state: Any) -> None:
        failpoint(f"step:{step.name}:{event}")

    hook.__name__ = f"failpoint-step-{event}"  # Prefect logs a hook by its name
    return hook


#: set (to anything) before the tasks are imported: step hooks even where no failpoint is armed yet (a harness that
#: imports once and arms each forked run later)
STEP_HOOKS_ENV = "ATOMA_OPS_STEP_HOOKS"


def step_hooks_armed() -> bool:
    """Whether this process may crash at (or trace) step boundaries: ``$ATOMA_OPS_FAILPOINTS``,
    ``$ATOMA_OPS_FAILPOINT_TRACE`` or ``$ATOMA_OPS_STEP_HOOKS`` set when the tasks are imported. Elsewhere the hooks
    would only pad every run's log with "Running hook …" lines."""
    return any(os.environ.get(v) for v in (FAILPOINTS_ENV, FAILPOINT_TRACE_ENV, STEP_HOOKS_ENV))


#: hooks of every task and stage flow: a step boundary the reliability harness can crash at
#: (``$ATOMA_OPS_FAILPOINTS=step:claim-funds:start``, see ``atoma_ops.core.failpoints``); none unless armed
STEP_HOOKS = (
    dict(on_running=[_step_boundary("start")], on_completion=[_step_boundary("done")]) if step_hooks_armed() else {}
)

#: the longest one try of a task may take (Prefect fails it after that, and the retry policy decides): a read or
#: local work; a chain write, which may first wait up to 15 minutes for its turn on the signer, then for finality
TASK_TIMEOUT_S = 900
CHAIN_WRITE_TIMEOUT_S = 1800
#: replaying a stack's whole history on the attester's engine (thousands of requests on a CPU engine take hours)
REPLAY_TIMEOUT_S = 4 * 3600
#: a stage flow (one lifecycle stage) and a scheduled run; each flow that may take longer says so
FLOW_TIMEOUT_S = 3600

#: options of every chain-writing task
CHAIN_WRITE = dict(
    retries=4,
    retry_delay_seconds=exponential_backoff(backoff_factor=0.5),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_not_terminal,
    cache_policy=NO_CACHE,
    timeout_seconds=CHAIN_WRITE_TIMEOUT_S,
    **STEP_HOOKS,
)
#: options of reads and local work
READ = dict(
    retries=2, retry_delay_seconds=1, retry_condition_fn=retry_if_not_terminal, cache_policy=NO_CACHE,
    timeout_seconds=TASK_TIMEOUT_S, **STEP_HOOKS,
)


def network_or_default(network: AtomaNetwork | None) -> AtomaNetwork:
    return network if network is not None else AtomaNetwork()


def ledger_for(network: AtomaNetwork, ledger: Ledger | None):
    """The DuckDB ledger (chain mirror, usage, analyst views)."""
    return (ledger or Ledger()).open(network.home)


def journal_for(network: AtomaNetwork, ledger: Ledger | None):
    """The intent journal every chain write goes through: PostgreSQL when the network block (or
    ``$ATOMA_OPS_JOURNAL_URL``) names one, shared by every host; else the ledger's own."""
    return network.open_journal(ledger_for(network, ledger))


@asynccontextmanager
async def open_chain(network: AtomaNetwork, wallet: SuiWallet | None) -> AsyncIterator[Any]:
    chain = await network.connect(wallet)
    try:
        yield chain
    finally:
        await chain.close()


@asynccontextmanager
async def open_node(network: AtomaNetwork, wallet: SuiWallet | None, node: str, engine: InferenceEngine | None = None):
    """The node ``node`` (alias or address) of ``network``, with ``engine`` loaded once per process."""
    from atoma_ops.serving.node import NodeService

    chain = await network.connect(wallet)
    service = await NodeService.open(network.home, node, shared_engine(engine) if engine else None, chain=chain)
    service._owns_chain = True
    try:
        yield service
    finally:
        await service.close()


_engines: dict[tuple, Any] = {}
_engines_lock = threading.Lock()


def shared_engine(config: InferenceEngine):
    """One engine per configuration per process: loading the CPU engine takes 15–20 s, so every serving and replay
    batch of a flow run (and later runs in the same worker process) reuse it."""
    key = config.cache_key()
    with _engines_lock:
        if key not in _engines:
            _engines[key] = config.build()
        return _engines[key]
