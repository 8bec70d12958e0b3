"""Helpers for the entry-function tests: a synchronous facade over a Chain port adapter.

``Net`` forwards every coroutine method of the port (``net.acquire_new_stack_entry("user", ...)``) through one event
loop, and adds small builders (``net.task()``, ``net.node()``, ``net.buy()``) plus ``net.fails(...)``, which asserts
the abort *and* that ``Localnet.state_digest()`` did not change.

Two paths, the same expectations (tests/chain/conftest.py parametrises ``net`` over both):

- ``Net(chain, draws)``: ``chain`` is the in-process ``LocalnetChain``.
- ``Net.over_loopback(chain, draws, home)``: the port calls go through ``SuiChain`` (pysui, gRPC) to a
  ``LoopbackSuiNode`` serving the same localnet file on 127.0.0.1, in Net's own event loop. The test-only hooks
  with no Sui equivalent (:data:`HOOKS`: faucet, epochs, the seeded rng) still go to the ``LocalnetChain``.

The helpers ``usdc()``, ``cfg()``, ``badge()``, ``digest()`` (the state digest ``fails()`` compares) and
``conserved()`` read the localnet file directly (``net.ln``), on both paths, so they also work from inside another
event loop; the port's reads (``net.get_stack(...)``, ``net.subscriptions(...)``, …) go through the adapter.
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


#: LocalnetChain methods with no Sui equivalent: always run on the localnet, whichever path is under test.
HOOKS = frozenset({"faucet_mint", "advance_epoch", "seed_rng"})


def network_for(node, ln) -> Any:
    """The ``SuiNetwork`` of a loopback node serving the localnet ``ln``."""
    from atoma_ops.chain.sui.networks import SuiNetwork

    return SuiNetwork(name="loopback", endpoint=node.url, package_id=ln.package_id, db_id=ln.db_id,
                      usdc_coin_type=ln.usdc_type)


class Net:
    """The facade. ``path`` names the path under test: ``localnet`` or ``sui`` (pysui → loopback node → localnet).

    Args:
        chain: the adapter under test.
        draws: the scripted rng (tests/conftest.py ``Draws``).
        hooks: the ``LocalnetChain`` that runs :data:`HOOKS` and whose localnet the helpers read; ``chain`` itself
            when it is one.
    """

    path = "localnet"

    def __init__(self, chain, draws, *, hooks=None, loop: asyncio.AbstractEventLoop | None = None):
        self.chain = chain
        self.hooks = chain if hooks is None else hooks
        self.ln = self.hooks.localnet
        self.draws = draws
        self.addr = chain.wallet.aliases()
        self.loop = asyncio.new_event_loop() if loop is None else loop
        self.loopback = None  # the LoopbackSuiNode on the sui path

    @classmethod
    def over_loopback(cls, hooks, draws, home) -> "Net":
        """A Net whose port calls go through ``SuiChain`` to a loopback node serving ``home``'s chain file, whose
        executions and simulations draw from ``draws``."""
        from atoma_ops.chain.sui.adapter import SuiChain
        from atoma_ops.testing.sui import LoopbackSuiNode

        loop = asyncio.new_event_loop()
        node = LoopbackSuiNode(home.chain_file, rng=draws)
        try:
            loop.run_until_complete(node.start())
            try:
                chain = loop.run_until_complete(SuiChain.connect(network_for(node, hooks.localnet), hooks.wallet))
            except BaseException:
                loop.run_until_complete(node.stop())
                raise
        except BaseException:
            loop.close()
            raise
        net = cls(chain, draws, hooks=hooks, loop=loop)
        net.path, net.loopback = "sui", node
        return net

    def close(self) -> None:
        try:
            if self.loopback is not None:
                try:
                    self.run(self.chain.close())  # the client's channel first, then the server
                finally:
                    self.run(self.loopback.stop())
        finally:
            # what asyncio.run does on its way out: tasks a test left running (a node service it never closed keeps
            # renewing its leases) are cancelled and wound up, not destroyed pending with the loop
            left = asyncio.all_tasks(self.loop)
            for task in left:
                task.cancel()

            async def wound_up() -> None:
                await asyncio.gather(*left, return_exceptions=True)

            self.loop.run_until_complete(wound_up())
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
            self.loop.close()

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.hooks if name in HOOKS else self.chain, name)
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
        before, recorded = self.digest(), self.tx_count()
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
        if self.path == "sui":
            # Sui's dry run catches every failure before anything is signed: no digest, nothing recorded.
            assert getattr(info.value, "digest", None) is None, info.value
            assert self.tx_count() == recorded, f"{function} failed on Sui but a transaction was recorded"
        return info.value

    def tx_count(self) -> int:
        """Transactions the localnet has recorded, failed ones included."""
        return self.ln.conn.execute("SELECT COUNT(*) FROM transactions").fetchone()[0]

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
    "RealNet",
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
    "HOOKS",
    "h",
    "honest_commitment",
    "network_for",
    "transfer",
    "sid",
]


def transfer(net: Net, sender: str, object_id: str, recipient: str):
    """A plain ``TransferObjects`` transaction (badges are ``key, store``: transferable, §2.2)."""
    tx = net.ln.build_transaction(net.addr[sender], [{"kind": "TransferObjects", "recipient": net.addr[recipient],
                                                      "objects": [object_id]}])
    return net.ln.execute(tx, [net.chain.wallet.sign(net.addr[sender], tx)])


class RealNet:
    """The port alone, as a real Sui network allows it (tests/chain/test_real_network.py).

    One sender plays every role (a real keystore holds one funded address with the AtomaManagerBadge): the wallet's
    active address on a network, ``admin`` on the localnet paths. No hooks, no scripted randomness, no state digest.
    ``fails()`` checks the abort's module, code, name and function and that the sender's badges and USDC coins
    (ids, versions, balances) did not change; on the localnet paths it also does everything ``Net.fails`` does.
    """

    def __init__(self, path: str, chain, sender: str, run, *, net: Net | None = None, close=None):
        self.path, self.chain, self.sender = path, chain, sender
        self._run, self._net, self._close = run, net, close

    @classmethod
    def on_localnet(cls, net: Net, usdc: int = 10 * USDC) -> "RealNet":
        """Over a localnet path: ``admin`` is funded first (an operator does that with the faucets)."""
        net.mint("admin", usdc)
        return cls(net.path, net.chain, net.addr["admin"], net.run, net=net, close=net.close)

    @classmethod
    def on_network(cls, settings: dict[str, str], client_yaml: str) -> "RealNet":
        """Over a real Sui network: ``settings`` are ``SuiNetwork`` fields, ``client_yaml`` the funded keystore."""
        from atoma_ops.chain.sui.adapter import SuiChain
        from atoma_ops.chain.sui.networks import SuiNetwork
        from atoma_ops.wallet import Wallet

        wallet = Wallet.load(client_yaml)
        loop = asyncio.new_event_loop()
        try:
            chain = loop.run_until_complete(SuiChain.connect(SuiNetwork(name="sui-network", **settings), wallet))
        except BaseException:
            loop.close()
            raise

        def close() -> None:
            try:
                loop.run_until_complete(chain.close())
            finally:
                loop.run_until_complete(loop.shutdown_default_executor())
                loop.close()

        return cls("sui-network", chain, wallet.resolve(None), loop.run_until_complete, close=close)

    def close(self) -> None:
        if self._close is not None:
            self._close()

    def call(self, function: str, **args: Any):
        """An entry function of the port, sent by :attr:`sender`."""
        return self._run(getattr(self.chain, function)(self.sender, **args))

    def read(self, function: str, *args: Any) -> Any:
        return self._run(getattr(self.chain, function)(*args))

    def snapshot(self) -> tuple:
        return self.read("badges", self.sender), self.read("usdc_coins", self.sender)

    def fails(self, expected: str, function: str, **args: Any) -> MoveAbort:
        """``function`` aborts with the ``atoma::db`` constant ``expected`` and changes nothing of the sender's."""
        before = self.snapshot()
        if self._net is not None:
            exc = self._net.fails(expected, function, self.sender, **args)
        else:
            with pytest.raises(MoveAbort) as info:
                self.call(function, **args)
            exc = info.value
            assert (exc.module, exc.code, exc.name, exc.function) == ("db", code_of(expected), expected, function), exc
            assert exc.digest is None, "Sui's dry run should have caught the abort before submission"
        assert self.snapshot() == before, f"{function} failed but changed the sender's objects"
        return exc
