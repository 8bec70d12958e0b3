"""A localnet with many stacks already served, for the flow tests, the reliability harness and the settlement
benchmark.

Serving here writes *recorded* model outputs into the node's real store (reserve + settle, so usage, histories,
hashes and the settlement state are exactly what serving leaves behind); no engine runs. Flows that serve or replay
are tested with the real CPU engine elsewhere; these helpers exist for tests whose subject is what happens after
serving (settlement runs, deployments, crashes), and for the benchmark's thousands of stacks.
"""

from __future__ import annotations

import asyncio
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from atoma_ops.chain.localnet.adapter import LocalnetChain
from atoma_ops.home import LocalnetHome
from atoma_ops.serving.store import NodeStore, Settlement, StackFacts

NODE = "node-1"
PRICE = 1_000_000
UNITS = 1_000


def recorded_response(stack_small_id: int, i: int) -> tuple[dict, dict]:
    """A chat request and a recorded response with its token usage (10 + 5 tokens = 15 compute units)."""
    request = {"messages": [{"role": "user", "content": f"stack {stack_small_id} request {i}"}], "max_tokens": 8}
    response = {
        "object": "chat.completion",
        "model": "recorded",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": f"answer {stack_small_id}.{i}"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
    return request, response


@dataclass
class Served:
    home: Path
    task_small_id: int
    node_small_id: int
    stack_small_ids: list[int]


async def served_stacks_async(
    home: Path, n_stacks: int, *, requests_per_stack: int = 2, security_level: int = 0, seed: int = 7,
    units: int = UNITS, init: bool = True,
) -> Served:
    """A fresh localnet in ``home`` (manual epochs) with ``n_stacks`` stacks sold to node-1 and served with
    recorded responses; nothing settled yet."""
    lh = LocalnetHome(Path(home))
    if init:
        localnet, _ = lh.init(seed=seed, force=True)
        localnet.close()
    chain = lh.open()
    try:
        admin, user, node = (chain.wallet.resolve(a) for a in ("admin", "user", NODE))
        cost = n_stacks * units * PRICE // 1_000_000 * 2
        await chain.faucet_mint(user, cost)
        tx = await chain.create_task_entry(admin, role=0, model_name="recorded", security_level=security_level)
        task = int(tx.event("TaskRegisteredEvent").parsed_json["task_small_id"]["inner"])
        tx = await chain.register_node_entry(node)
        node_id = int(tx.event("NodeRegisteredEvent").parsed_json["node_small_id"]["inner"])
        await chain.subscribe_node_to_task(node, task_small_id=task, price_per_one_million_compute_units=PRICE)
        stacks = []
        for _ in range(n_stacks):
            tx = await chain.acquire_new_stack_entry(user, task_small_id=task, num_compute_units=units, price=PRICE)
            stacks.append(int(tx.event("StackCreatedEvent").parsed_json["stack_small_id"]["inner"]))
        facts = [StackFacts.of(await chain.get_stack(s)) for s in stacks]
    finally:
        await chain.close()
    with NodeStore(NodeStore.path_for(home, NODE)) as store:
        store.bind_node(node_id, node)
        pairs = [(f, recorded_response(f.stack_small_id, i)) for f in facts for i in range(requests_per_stack)]
        reservations = store.reserve([(f, 20) for f, _ in pairs])
        store.settle([Settlement(r, req, resp) for r, (_, (req, resp)) in zip(reservations, pairs)])
    return Served(Path(home), task, node_id, stacks)


def served_stacks(home: Path, n_stacks: int, **kwargs) -> Served:
    return asyncio.run(served_stacks_async(home, n_stacks, **kwargs))


@contextmanager
def opened(home: Path) -> Iterator[LocalnetChain]:
    """The localnet of ``home`` (through its own wallet), closed afterwards."""
    chain = LocalnetHome(Path(home)).open()
    try:
        yield chain
    finally:
        chain.localnet.close()


def advance_epoch(home: Path, count: int = 1) -> int:
    """Advance the localnet's epoch (the localnet's stand-in for a day passing); returns the new epoch."""
    with opened(home) as chain:
        return chain.localnet.advance_epoch(count)
