"""Helpers for the entry-function tests: a synchronous facade over the async ``LocalnetChain``.

``Net`` forwards every coroutine method of the port (``net.acquire_new_stack_entry("user", ...)``) through one event
loop, and adds small builders (``net.task()``, ``net.node()``, ``net.buy()``) plus ``net.fails(...)``, which asserts
the abort *and* that ``Localnet.state_digest()`` did not change.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from typing import Any

import pytest

from atoma_ops.chain import InvalidArgument, MoveAbort, MoveArithmeticError, TransactionRejected
from atoma_ops.protocol.aborts import code_of

NO_SECURITY, CONFIDENTIAL, SAMPLING = 0, 1, 2
USDC = 1_000_000

P32 = hashlib.blake2b(b"proof", digest_size=32).digest()
L32 = hashlib.blake2b(b"leaf", digest_size=32).digest()


def h(data: bytes) -> bytes:
    """``sui::hash::blake2b256``."""
    return hashlib.blake2b(data, digest_size=32).digest()


def honest_commitment(root: bytes, extra: int = 1) -> tuple[bytes, list[bytes]]:
    """Self-consistent scheme of §8.3: leaf_i = H(u8(i) ‖ R), proof = H(leaf_0 ‖ … ‖ leaf_extra)."""
    leaves = [h(bytes([i]) + root) for i in range(extra + 1)]
    return h(b"".join(leaves)), leaves


def sid(n: int) -> dict:
    return {"inner": str(n)}


_ENTRY = {
    "task": "create_task_entry", "node": "register_node_entry", "sub": "subscribe_node_to_task",
    "buy": "acquire_new_stack_entry", "settle": "try_settle_stack", "attest": "submit_stack_settlement_attestation",
    "claim": "claim_funds", "claim_cc": "claim_funds_for_stacks",
}


class Net:
    def __init__(self, chain, draws):
        self.chain = chain
        self.ln = chain.localnet
        self.draws = draws
        self.addr = chain.wallet.aliases()
        self.loop = asyncio.new_event_loop()

    def close(self) -> None:
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.chain, name)
        if inspect.iscoroutinefunction(attr):
            return lambda *a, **k: self.run(attr(*a, **k))
        return attr

    # ------------------------------------------------------------------ assertions
    def digest(self) -> str:
        return self.ln.state_digest()

    def fails(self, expected: Any, function: str, *args: Any, **kwargs: Any) -> Exception:
        """Call ``function``; assert it raises ``expected`` and that the chain state is unchanged.

        ``expected``: an ``atoma::db`` constant name, a ``(module, code)`` framework abort, or an exception class.
        """
        before = self.digest()
        fn = getattr(self, function)
        if isinstance(expected, type):
            with pytest.raises(expected) as info:
                fn(*args, **kwargs)
        else:
            with pytest.raises(MoveAbort) as info:
                fn(*args, **kwargs)
            exc = info.value
            if isinstance(expected, str):
                assert (exc.module, exc.code, exc.name) == ("db", code_of(expected), expected), str(exc)
                if function == "set":
                    assert exc.function == args[0]
                elif function == "admin_set":
                    assert exc.function == args[1]
                else:
                    assert exc.function == _ENTRY.get(function, function)
            else:
                assert (exc.module, exc.code) == tuple(expected), str(exc)
        assert self.digest() == before, f"{function} failed but changed the chain state"
        return info.value

    def conserved(self) -> dict:
        t = self.ln.total_usdc()
        assert t["minted"] == t["coins"] + t["fee_treasury"] + t["communal_treasury"] + t["collateral"], t
        return t

    # ------------------------------------------------------------------ reads
    def usdc(self, alias: str) -> int:
        return self.ln.usdc_balance(self.addr[alias])

    def cfg(self):
        return self.ln.db_config()

    def treasury(self) -> int:
        return self.cfg().fee_treasury

    def badge(self, alias: str, kind: str, small_id: int | None = None):
        found = [b for b in self.ln.badges(self.addr[alias]) if b.kind == kind and (small_id is None or b.small_id == small_id)]
        assert len(found) == 1, found
        return found[0]

    @staticmethod
    def events(result, name: str | None = None) -> list[dict]:
        return [e.parsed_json for e in result.events if name is None or e.name == name]

    @staticmethod
    def names(result) -> list[str]:
        return [e.name for e in result.events]

    # ------------------------------------------------------------------ builders
    def epoch(self, n: int = 1) -> int:
        return self.advance_epoch(n)

    def mint(self, alias: str, amount: int) -> None:
        self.faucet_mint(self.addr[alias], amount)

    def task(self, security_level: int | None = NO_SECURITY, *, is_public: bool = True, min_score: int | None = None,
             role: int = 0, model: str | None = "meta-llama/Llama-3.3-70B-Instruct") -> int:
        r = self.create_task_entry("admin", role=role, model_name=model, security_level=security_level,
                                   minimum_reputation_score=min_score, is_public=is_public)
        return int(self.events(r, "TaskRegisteredEvent")[0]["task_small_id"]["inner"])

    def node(self, alias: str) -> int:
        r = self.register_node_entry(alias)
        return int(self.events(r, "NodeRegisteredEvent")[0]["node_small_id"]["inner"])

    def sub(self, alias: str, task: int, price: int = 1_000, **hint: Any):
        return self.subscribe_node_to_task(alias, task_small_id=task, price_per_one_million_compute_units=price, **hint)

    def buy(self, task: int, units: int = 1_000_000, price: int = 1_000_000, *, draw: int | None = None,
            sender: str = "user") -> int:
        if draw is not None:
            self.draws.push(draw)
        r = self.acquire_new_stack_entry(sender, task_small_id=task, num_compute_units=units, price=price)
        return int(self.events(r, "StackCreatedEvent")[0]["stack_small_id"]["inner"])

    def settle(self, alias: str, stack: int, claimed: int, proof: bytes = P32, leaf: bytes = L32, **hint: Any):
        return self.try_settle_stack(alias, stack_small_id=stack, num_claimed_compute_units=claimed,
                                     committed_stack_proof=proof, stack_merkle_leaf=leaf, **hint)

    def attest(self, alias: str, stack: int, proof: bytes, leaf: bytes, **hint: Any):
        return self.submit_stack_settlement_attestation(alias, stack_small_id=stack, committed_stack_proof=proof,
                                                        stack_merkle_leaf=leaf, **hint)

    def claim(self, alias: str, *stacks: int, **hint: Any):
        return self.claim_funds(alias, settled_ticket_ids=list(stacks), **hint)

    def claim_cc(self, alias: str, stacks: list[int], units: list[int], **hint: Any):
        return self.claim_funds_for_stacks(alias, stack_small_ids=stacks, num_compute_units_per_stack_to_claim=units,
                                           **hint)

    def set(self, setter: str, value: int | None = None):
        return self.admin_set("admin", setter, value)

    def force_attestation(self) -> None:
        """Make the SamplingConsensus lottery always fire (r = draw % 1000 + 1 <= 1000)."""
        self.set("set_cross_validation_probability_permille", 1000)


__all__ = [
    "CONFIDENTIAL",
    "InvalidArgument",
    "L32",
    "MoveAbort",
    "MoveArithmeticError",
    "NO_SECURITY",
    "Net",
    "P32",
    "SAMPLING",
    "TransactionRejected",
    "USDC",
    "h",
    "honest_commitment",
    "transfer",
    "sid",
]


def transfer(net: Net, sender: str, object_id: str, recipient: str):
    """A plain ``TransferObjects`` transaction (badges are ``key, store``: transferable, §2.2)."""
    tx = net.ln.build_transaction(net.addr[sender], [{"kind": "TransferObjects", "recipient": net.addr[recipient],
                                                      "objects": [object_id]}])
    return net.ln.execute(tx, [net.chain.wallet.sign(net.addr[sender], tx)])
