"""Stateful property test of the localnet's ``atoma::db`` (atoma-protocol.md §4, §6, §14).

A hypothesis ``RuleBasedStateMachine`` drives every entry function — with valid and invalid arguments — plus faucet
mints and epoch advances against a fresh localnet per example, and checks after every step:

* a transaction that aborts (``MoveAbort`` / ``MoveArithmeticError``) changes nothing (``state_digest()``) and is
  recorded as a failure under its digest; one that is refused (``TransactionRejected``) changes nothing either;
* conservation of USDC: minted == Σ coins + fee_treasury + communal_treasury + node collateral (§6);
* no stack has claimed units above its units as bought (tickets, try-settle and claim events, against a model
  of every ``StackCreatedEvent``);
* no stack is paid out twice (at most one ``StackSettlementTicketClaimedEvent`` / ``ClaimedStackEvent`` per stack);
* node fee + refund never exceed what the buyer paid for NoSecurity / ConfidentialCompute stacks;
* the ``next_*_small_id`` counters only grow, each by exactly the number of creations seen.

Speed: transactions go through the adapter's ``prepare`` (driven synchronously: it never awaits), the wallet's
``sign`` and the sync engine's ``execute`` — about 0.8 ms per call against 1.8 ms for ``asyncio.run(chain.call(...))``
(measured on the dev box). Each example copies a pre-published SQLite template (bare, or seeded with nodes, tasks,
subscriptions and USDC) instead of publishing, and one wallet serves the whole session (publish only needs the admin
address). The chain copies run with ``PRAGMA synchronous=OFF``: durability is not under test here (the concurrency
tests keep the engine's FULL).

``ATOMA_SM_EXAMPLES`` / ``ATOMA_SM_STEPS`` override the example count (default 400, the fast slice in ``make test``;
``make reliability`` runs 20000) and steps per example (20). What the slice keeps: every invariant is checked after
every step of every example, and the run must reach stacks bought, tickets claimed, disputes and task removals
(each came within the first 100 examples of the runs measured, and 9 times or more in 400). What it gives up: hypothesis
finds the deepest paths in bursts (one interesting example, then many variations of it), so a run of 400 does not
always reach an attestation, a try-settle or a confidential claim (one measured run had no attestation in 400, another
its first at example ~350); the long run (1000 examples or more) must reach all of them, and it is where rare
interleavings (a claim inside the dispute window, a claim of a disputed stack: a handful per 1000) are looked for.
"""

from __future__ import annotations

import collections
import hashlib
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from atoma_ops.chain.errors import ChainError, InvalidArgument, MoveAbort, NotFound, TransactionRejected
from atoma_ops.chain.localnet.adapter import LocalnetChain
from atoma_ops.chain.localnet.engine import Localnet
from atoma_ops.protocol import money
from atoma_ops.protocol.constants import U64_MAX, SecurityLevel
from atoma_ops.wallet import Wallet
from atoma_ops.testing.drive import run_sync

ALIASES = ("admin", "user", "node-1", "node-2", "node-3")
NODE_ALIASES = ("node-1", "node-2", "node-3")
BUYERS = ("user", "node-1")

EXAMPLES = int(os.environ.get("ATOMA_SM_EXAMPLES", "400"))
STEPS = int(os.environ.get("ATOMA_SM_STEPS", "20"))

SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)

PAYOUT_EVENTS = ("StackSettlementTicketClaimedEvent", "ClaimedStackEvent")
COUNTERS = ("next_node_small_id", "next_task_small_id", "next_stack_small_id")


def h32(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


def leaf(index: int, root: bytes) -> bytes:
    """The self-consistent commitment scheme of atoma-protocol.md §8.3: leaf_i = blake2b256(u8(i) ‖ R)."""
    return h32(bytes([index % 256]) + root)


def committed_proof(root: bytes, extra_nodes: int) -> bytes:
    """blake2b256(leaf_0 ‖ … ‖ leaf_k): what the contract's final attestation check recomputes."""
    return h32(b"".join(leaf(i, root) for i in range(extra_nodes + 1)))


def _sized(data: bytes, length: int) -> bytes:
    return (data * (length // max(len(data), 1) + 1))[:length]


# ---------------------------------------------------------------------------------------------------------- setup
@dataclass
class Env:
    folder: Path
    wallet: Wallet
    templates: dict[str, Path]
    counter: int = 0
    stats: collections.Counter = field(default_factory=collections.Counter)


def _build_templates(folder: Path, wallet: Wallet) -> dict[str, Path]:
    addr = wallet.aliases()
    bare = folder / "template-bare.sqlite"
    Localnet.publish(bare, addr["admin"]).close()

    seeded = folder / "template-seeded.sqlite"
    ln = Localnet.publish(seeded, addr["admin"])
    chain = LocalnetChain(ln, wallet)

    def call(sender: str, function: str, **args: Any) -> None:
        prepared = run_sync(chain.prepare(sender, function, args))
        ln.execute(prepared.tx_bytes, [chain.sign(prepared)])

    for alias in NODE_ALIASES:  # nodes 1, 2, 3
        call(alias, "register_node_entry")
    # tasks 1 NoSecurity, 2 ConfidentialCompute, 3 SamplingConsensus (public), 4 SamplingConsensus private
    for level, public in ((0, True), (1, True), (2, True), (2, False)):
        call("admin", "create_task_entry", role=0, model_name="meta-llama/Llama-3.3-70B-Instruct",
             security_level=level, minimum_reputation_score=None, is_public=public)
    call("admin", "whitelist_nodes_for_task", task_small_id=4, nodes=[1, 2])
    for task in (1, 2, 3):
        for node, price in ((1, 1), (2, 1_000), (3, 1_000_000)):
            call(NODE_ALIASES[node - 1], "subscribe_node_to_task", node_small_id=node, task_small_id=task,
                 price_per_one_million_compute_units=price)
    for node in (1, 2):
        call(NODE_ALIASES[node - 1], "subscribe_node_to_task", node_small_id=node, task_small_id=4,
             price_per_one_million_compute_units=10)
    call("admin", "set_cross_validation_probability_permille", value=1000)  # attestations actually happen
    ln.faucet_mint(addr["user"], 1_000_000_000_000)
    ln.faucet_mint(addr["node-1"], 5_000_000)
    # stacks 1..7 on tasks 1, 2, 3, 4, 1, 3, 2
    for task in (1, 2, 3, 4, 1, 3, 2):
        call("user", "acquire_new_stack_entry", task_small_id=task, num_compute_units=1_000_000, price=1_000_000)
    # epoch 0: task 5 created and deprecated, node 4 (a second badge of node-3) registered and disabled
    call("admin", "create_task_entry", role=1, model_name=None, security_level=None, minimum_reputation_score=None,
         is_public=True)
    call("admin", "deprecate_task", task_small_id=5)
    call("node-3", "register_node_entry")
    call("node-3", "permanently_disable_node", node_small_id=4)
    ln.advance_epoch(2)
    # epoch 2: stacks 5 and 6 try-settled honestly; stack 6's ticket (SamplingConsensus, probability 1000 ‰) waits
    # for its attester. Then epoch 3: tickets claimable and still attestable, task 5 removable by badge and by
    # admin, node 4 destroyable one epoch later.
    for stack in (5, 6):
        node = ln.get_stack(stack).selected_node_id
        root = template_root(stack)
        call(NODE_ALIASES[node - 1], "try_settle_stack", node_small_id=node, stack_small_id=stack,
             num_claimed_compute_units=400_000, committed_stack_proof=committed_proof(root, 1),
             stack_merkle_leaf=leaf(0, root))
    ln.advance_epoch()
    ln.close()
    return {"bare": bare, "seeded": seeded}


def template_root(stack: int) -> bytes:
    return h32(b"template root" + bytes([stack]))


@pytest.fixture(scope="module")
def sm_env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    folder = tmp_path_factory.mktemp("state-machine")
    wallet = Wallet.create(folder / "wallet", list(ALIASES), env_alias="atoma-localnet")
    return Env(folder, wallet, _build_templates(folder, wallet))


# ---------------------------------------------------------------------------------------------------------- model
@dataclass
class StackModel:  # noqa: D101 - fields as in StackCreatedEvent
    owner: str
    task: int
    level: int
    node: int
    units: int
    price: int
    paid: int
    root: bytes | None = None  # R of the commitment, once try-settled
    settled: bool = False  # has (had) a settlement ticket
    payouts: int = 0


small = st.integers(0, 7)  # index into the known ids; 6 and 7 name ids that do not exist
seed = st.integers(0, 2**64 - 1)
units_st = st.one_of(
    st.sampled_from([1, 999, 333_333, 500_000, 1_000_000]),  # what a node can serve
    st.sampled_from([0, 1_000_001, 2**40, 2**63]),  # EInvalidComputeUnits, ENoNodesEligibleForTask, overflow
    st.integers(0, 1_100_000),
)
price_st = st.one_of(
    st.sampled_from([1_000, 1_000_000, 1_000_001, 2_000_000]),  # at or above the seeded asks (1, 1000, 1e6)
    st.sampled_from([0, 1, 3, 999_999, 10**12, 2**63, U64_MAX]),
    st.integers(0, 5_000_000),
)
claim_mode = st.sampled_from(["zero", "some", "all", "all", "over", "random"])
hash_len = st.sampled_from([32, 32, 32, 32, 31, 33, 0])


class LocalnetMachine(RuleBasedStateMachine):
    env: Env  # set by the test before running

    def __init__(self) -> None:
        super().__init__()
        self.ln: Localnet | None = None
        self.rand = random.Random(0)

    # ------------------------------------------------------------------ plumbing
    @initialize(template=st.sampled_from(["seeded", "seeded", "seeded", "bare"]), rng_seed=seed)
    def open_chain(self, template: str, rng_seed: int) -> None:
        env = self.env
        env.counter += 1
        self.path = env.folder / f"chain-{env.counter}.sqlite"
        shutil.copy(env.templates[template], self.path)
        self.rand.seed(rng_seed)
        self.ln = Localnet(self.path, rng=lambda: self.rand.getrandbits(64))
        self.ln.conn.execute("PRAGMA synchronous=OFF")  # ~15 % faster here; far more on slow-fsync CI disks
        self.chain = LocalnetChain(self.ln, env.wallet)
        self.addr = env.wallet.aliases()
        self.alias_of = {a: n for n, a in self.addr.items()}
        # Model of what the template holds.
        cfg = self.ln.db_config()
        self.counters = {k: getattr(cfg, k) for k in COUNTERS}
        self.node_owner: dict[int, str] = {}
        for alias in NODE_ALIASES:
            for badge in self.ln.badges(self.addr[alias]):
                if badge.kind == "NodeBadge":
                    self.node_owner[badge.small_id] = alias
        self.task_level = {t: self.ln.get_task(t).security_level for t in range(1, cfg.next_task_small_id)}
        self.stacks: dict[int, StackModel] = {}
        for st_ in self.ln.list_stacks():
            level = self.task_level[st_.task_small_id]
            paid = money.stack_payment(level, st_.price_per_one_million_compute_units, st_.num_compute_units,
                                       cfg.sampling_consensus_charge_permille,
                                       cfg.cross_validation_extra_nodes_charge_permille)
            model = StackModel(st_.owner, st_.task_small_id, level, st_.selected_node_id, st_.num_compute_units,
                               st_.price_per_one_million_compute_units, paid)
            if self.ln.get_ticket(st_.stack_small_id) is not None:
                model.root = template_root(st_.stack_small_id)
                model.settled = True
            self.stacks[st_.stack_small_id] = model
        self.minted = self.ln.usdc_minted()
        self.subs = {(sub.node_small_id, t) for t in self.task_level for sub in self.ln.subscriptions(t)}

    def teardown(self) -> None:
        if self.ln is not None:
            self.ln.close()
            for suffix in ("", "-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)

    def _pick(self, ids: list[int], i: int) -> int:
        ids = sorted(ids)
        if ids and i < 6:
            return ids[i % len(ids)]
        return max(ids, default=0) + 1 + (i % 2)

    def node_id(self, i: int) -> int:
        return self._pick(list(self.node_owner), i)

    def node_alias(self, node: int) -> str:
        return self.node_owner.get(node, NODE_ALIASES[node % 3])

    def task_id(self, i: int) -> int:
        return self._pick(list(self.task_level), i)

    def stack_id(self, i: int) -> int:
        return self._pick(list(self.stacks), i)

    def stack_where(self, i: int, pred, unpaid: bool = True) -> int:
        """Mostly a stack the operation can succeed on (i < 4), otherwise any id, existing or not."""
        candidates = sorted(
            s for s, m in self.stacks.items()
            if pred(m) and (m.payouts == 0 or (not unpaid and m.level == SecurityLevel.CONFIDENTIAL_COMPUTE))
        )
        if candidates and i < 4:
            return candidates[i % len(candidates)]
        return self.stack_id(i)

    def tx(self, sender: str, function: str, **args: Any):
        """Prepare, sign, execute; on abort check that nothing changed. Returns the TxResult or None."""
        stats = self.env.stats
        try:
            prepared = run_sync(self.chain.prepare(sender, function, args))
        except InvalidArgument:  # e.g. the sender owns no badge with that small id
            stats[f"{function}: not prepared"] += 1
            return None
        before = self.ln.state_digest()
        signature = self.chain.sign(prepared)
        try:
            result = self.ln.execute(prepared.tx_bytes, [signature])
        except (TransactionRejected, InvalidArgument, NotFound):
            raise  # never expected from a well-formed call by the badge's owner
        except ChainError as exc:  # MoveAbort, MoveArithmeticError, or any other recorded execution failure
            assert self.ln.state_digest() == before, f"{function} aborted ({exc}) but changed the state"
            record = self.ln.get_transaction(prepared.digest)
            assert record is not None and record.status == "failure"
            assert record.events == [] and record.object_changes == []
            stats[f"{function}: {getattr(exc, 'name', type(exc).__name__)}"] += 1
            return None
        assert result.status == "success" and result.digest == prepared.digest
        stats[f"{function}: ok"] += 1
        self.absorb(sender, function, result)
        return result

    def payout_model(self, node: int, fees: int = 0, refunds: list[tuple[str, int]] = (), credits=None,
                     node_destroyed: bool = False):
        """Before a paying call: what it must transfer if it succeeds (§4.13–4.16). Returns a checker."""
        credits = credits or {}
        epoch = self.ln.current_epoch()
        pre = {n: self.ln.get_node(n) for n in {node, *credits}}
        entry = pre[node]
        sender = self.addr[self.node_alias(node)]

        def check(result) -> None:
            if result is None:
                return
            assert entry is not None, "a call on a missing node entry succeeded"
            withdrawn = entry.available_fee_amount + credits.get(node, 0)
            if entry.last_fee_epoch != epoch:
                withdrawn += entry.last_fee_epoch_amount
            expected: collections.Counter = collections.Counter()
            for owner, refund in refunds:
                expected[owner] += refund
            expected[sender] += fees + withdrawn + (entry.collateral if node_destroyed else 0)
            assert result.balance_changes == {a: v for a, v in expected.items() if v}, (
                f"payouts {result.balance_changes} != model {dict(expected)}")
            after = self.ln.get_node(node)
            assert (after is None) if node_destroyed else (after.available_fee_amount == 0)
            for attester, credit in credits.items():
                if attester != node and pre[attester] is not None:
                    got = self.ln.get_node(attester).available_fee_amount
                    assert got == pre[attester].available_fee_amount + credit, f"attester {attester} credit"
            self.env.stats["payouts checked against the model"] += 1

        return check

    def absorb(self, sender: str, function: str, result) -> None:
        """Fold a successful transaction's events into the model, checking claims and payouts."""
        cfg = self.ln.db_config()
        for ev in result.events:
            self.env.stats[f"event {ev.name}"] += 1
            j = ev.parsed_json
            if ev.name == "NodeRegisteredEvent":
                node = int(j["node_small_id"]["inner"])
                assert node not in self.node_owner, f"node small id {node} reused"
                self.node_owner[node] = self.alias_of[result.sender]
            elif ev.name == "TaskRegisteredEvent":
                task = int(j["task_small_id"]["inner"])
                assert task not in self.task_level, f"task small id {task} reused"
                self.task_level[task] = j["security_level"]["inner"]
            elif ev.name == "StackCreatedEvent":
                stack = int(j["stack_small_id"]["inner"])
                assert stack not in self.stacks, f"stack small id {stack} reused"
                task = int(j["task_small_id"]["inner"])
                units = int(j["num_compute_units"])
                price = int(j["price_per_one_million_compute_units"])
                owner = j["owner"]
                paid = -result.balance_changes.get(owner, 0)
                level = self.task_level[task]
                expected = money.stack_payment(
                    level, price, units, cfg.sampling_consensus_charge_permille,
                    cfg.cross_validation_extra_nodes_charge_permille,
                )
                assert paid == expected, f"stack {stack}: paid {paid}, expected {expected}"
                assert units <= 1_000_000, "a subscription's capacity is 1e6 units (§14.2)"
                node = int(j["selected_node_id"]["inner"])
                self.stacks[stack] = StackModel(owner, task, level, node, units, price, paid)
            elif ev.name == "NodeSubscribedToTaskEvent":
                self.subs.add((int(j["node_small_id"]["inner"]), int(j["task_small_id"]["inner"])))
            elif ev.name == "NodeUnsubscribedFromTaskEvent":
                self.subs.discard((int(j["node_small_id"]["inner"]), int(j["task_small_id"]["inner"])))
            elif ev.name == "StackTrySettleEvent":
                stack = int(j["stack_small_id"]["inner"])
                assert int(j["num_claimed_compute_units"]) <= self.stacks[stack].units
                assert not self.stacks[stack].settled or self.stacks[stack].payouts == 1, "second ticket"
                self.stacks[stack].settled = True
            elif ev.name in PAYOUT_EVENTS:
                stack = int(j["stack_small_id"]["inner"])
                model = self.stacks[stack]
                claimed = int(j["num_claimed_compute_units"])
                refund = int(j["user_refund_amount"])
                assert claimed <= model.units, f"stack {stack}: claimed {claimed} > {model.units} units"
                model.payouts += 1
                assert model.payouts == 1, f"stack {stack} paid out twice"
                if ev.name == "ClaimedStackEvent":
                    assert model.level == SecurityLevel.CONFIDENTIAL_COMPUTE
                    node_fee = money.confidential_claim_amount(model.price, claimed)
                    assert refund == money.confidential_claim_amount(model.price, model.units - claimed)
                else:
                    scp = cfg.sampling_consensus_charge_permille
                    node_fee = money.stack_fee_amount(model.level, model.price, claimed, scp)
                    assert refund == money.stack_fee_amount(model.level, model.price, model.units - claimed, scp)
                if model.level != SecurityLevel.SAMPLING_CONSENSUS:
                    assert node_fee + refund <= model.paid, f"stack {stack}: payout exceeds payment"
                assert int(j["selected_node_id"]["inner"]) == model.node

    # ------------------------------------------------------------------ §4.1, §4.16 nodes
    @rule(owner=st.sampled_from(NODE_ALIASES))
    def register_node(self, owner: str) -> None:
        self.tx(owner, "register_node_entry")

    @rule(i=small)
    def permanently_disable_node(self, i: int) -> None:
        node = self.node_id(i)
        self.tx(self.node_alias(node), "permanently_disable_node", node_small_id=node)

    @rule(i=small)
    def destroy_disabled_node(self, i: int) -> None:
        node = self.node_id(i)
        expect = self.payout_model(node, node_destroyed=True)
        expect(self.tx(self.node_alias(node), "destroy_disabled_node", node_small_id=node))

    @rule(i=small)
    def withdraw_fees(self, i: int) -> None:
        node = self.node_id(i)
        expect = self.payout_model(node)
        expect(self.tx(self.node_alias(node), "withdraw_fees", node_small_id=node))

    # ------------------------------------------------------------------ §4.2–4.5 tasks
    @rule(
        role=st.one_of(st.integers(0, 7), st.sampled_from([8, 9, 65535])),
        level=st.sampled_from([None, 0, 1, 2, 2, 2, 3, 65535]),
        min_score=st.sampled_from([None, None, 0, 50, 51, 100, 101, 255]),
        public=st.booleans(),
        model_name=st.sampled_from([None, "m", "HuggingFaceTB/SmolLM2-135M-Instruct"]),
    )
    def create_task(
        self, role: int, level: int | None, min_score: int | None, public: bool, model_name: str | None
    ) -> None:
        self.tx("admin", "create_task_entry", role=role, model_name=model_name, security_level=level,
                minimum_reputation_score=min_score, is_public=public)

    @rule(i=small)
    def deprecate_task(self, i: int) -> None:
        self.tx("admin", "deprecate_task", task_small_id=self.task_id(i))

    @rule(i=small)
    def remove_deprecated_task(self, i: int) -> None:
        self.tx("admin", "remove_deprecated_task", task_small_id=self.task_id(i))

    @rule(i=small)
    def remove_deprecated_task_by_admin(self, i: int) -> None:
        self.tx("admin", "remove_deprecated_task_by_admin", task_small_id=self.task_id(i))

    @rule(i=small, nodes=st.lists(small, max_size=3))
    def whitelist_nodes_for_task(self, i: int, nodes: list[int]) -> None:
        self.tx("admin", "whitelist_nodes_for_task", task_small_id=self.task_id(i),
                nodes=[self.node_id(n) for n in nodes])

    # ------------------------------------------------------------------ §4.6–4.8 subscriptions
    def node_task(self, n: int, t: int, subscribed: bool) -> tuple[int, int]:
        """Mostly a (node, task) pair (not) subscribed yet (n < 4), otherwise any ids, existing or not."""
        pairs = sorted((node, task) for node in self.node_owner for task in self.task_level
                       if ((node, task) in self.subs) == subscribed)
        if pairs and n < 4:
            return pairs[(n * 8 + t) % len(pairs)]
        return self.node_id(n), self.task_id(t)

    @rule(n=small, t=small, price=price_st)
    def subscribe_node_to_task(self, n: int, t: int, price: int) -> None:
        node, task = self.node_task(n, t, subscribed=False)
        self.tx(self.node_alias(node), "subscribe_node_to_task", node_small_id=node, task_small_id=task,
                price_per_one_million_compute_units=price)

    @rule(n=small, t=small, price=price_st)
    def update_node_subscription(self, n: int, t: int, price: int) -> None:
        node, task = self.node_task(n, t, subscribed=True)
        self.tx(self.node_alias(node), "update_node_subscription", node_small_id=node, task_small_id=task,
                price_per_one_million_compute_units=price)

    @rule(n=small, t=small)
    def unsubscribe_node_from_task(self, n: int, t: int) -> None:
        node, task = self.node_task(n, t, subscribed=True)
        self.tx(self.node_alias(node), "unsubscribe_node_from_task", node_small_id=node, task_small_id=task)

    # ------------------------------------------------------------------ §4.9 stacks
    @rule(buyer=st.sampled_from(BUYERS), t=small, units=units_st, price=price_st, rng_seed=seed)
    def acquire_new_stack(self, buyer: str, t: int, units: int, price: int, rng_seed: int) -> None:
        self.rand.seed(rng_seed)
        self.tx(buyer, "acquire_new_stack_entry", task_small_id=self.task_id(t), num_compute_units=units, price=price)

    # ------------------------------------------------------------------ §4.10–4.12 settlement
    @rule(s=small, mode=claim_mode, amount=st.integers(0, 2_000_000), honest=st.booleans(), wrong_node=small,
          proof_len=hash_len, leaf_len=hash_len, rng_seed=seed)
    def try_settle_stack(self, s: int, mode: str, amount: int, honest: bool, wrong_node: int, proof_len: int,
                         leaf_len: int, rng_seed: int) -> None:
        stack = self.stack_where(s, lambda m: not m.settled, unpaid=False)
        model = self.stacks.get(stack)
        units = model.units if model else 1_000
        claimed = {"zero": 0, "some": units // 3, "all": units, "over": units + 1, "random": amount}[mode]
        node = model.node if model and wrong_node < 5 else self.node_id(wrong_node)
        root = random.Random(rng_seed).randbytes(32)
        extra = self.ln.db_config().cross_validation_extra_nodes_count
        # (an absurd extra-nodes count cannot be committed to honestly; the contract refuses it anyway)
        proof = committed_proof(root, extra) if honest and extra <= 16 else h32(b"not the commitment" + root)
        self.rand.seed(rng_seed)
        result = self.tx(self.node_alias(node), "try_settle_stack", node_small_id=node, stack_small_id=stack,
                         num_claimed_compute_units=claimed, committed_stack_proof=_sized(proof, proof_len),
                         stack_merkle_leaf=_sized(leaf(0, root), leaf_len))
        if result is not None:
            model.root = root

    @rule(s=small, who=small, honest_proof=st.booleans(), honest_leaf=st.booleans(), proof_len=hash_len)
    def submit_attestation(self, s: int, who: int, honest_proof: bool, honest_leaf: bool, proof_len: int) -> None:
        stack = self.stack_where(s, lambda m: m.settled and m.level == SecurityLevel.SAMPLING_CONSENSUS)
        ticket = self.ln.get_ticket(stack)
        model = self.stacks.get(stack)
        requested = ticket.requested_attestation_nodes if ticket else []
        node = requested[who % len(requested)] if requested and who < 6 else self.node_id(who)
        root = model.root if model and model.root else b"\x07" * 32
        index = requested.index(node) + 1 if node in requested else 1
        proof = ticket.committed_stack_proof if ticket and honest_proof else h32(b"other" + root)
        leaf_bytes = leaf(index, root) if honest_leaf else h32(b"bad leaf" + root)
        self.tx(self.node_alias(node), "submit_stack_settlement_attestation", node_small_id=node, stack_small_id=stack,
                committed_stack_proof=_sized(proof, proof_len), stack_merkle_leaf=leaf_bytes)

    @rule(s=small, n=small, commitment=st.binary(max_size=40))
    def start_attestation_dispute(self, s: int, n: int, commitment: bytes) -> None:
        node = self.node_id(n)
        stack = self.stack_where(s, lambda m: m.settled)
        self.tx(self.node_alias(node), "start_attestation_dispute", node_small_id=node, stack_small_id=stack,
                attestation_commitment=commitment)

    # ------------------------------------------------------------------ §4.13–4.15 claims
    @rule(picks=st.lists(small, min_size=1, max_size=4), wrong_node=small)
    def claim_funds(self, picks: list[int], wrong_node: int) -> None:
        # Settled stacks, the confidential ones already paid included (the §4.10 EStackAlreadyClaimed quirk).
        stacks = [self.stack_where(p, lambda m: m.settled, unpaid=False) for p in picks]
        first = self.stacks.get(stacks[0]) if stacks else None
        node = first.node if first and wrong_node < 5 else self.node_id(wrong_node)
        # Reference model of the payouts (§4.13), from the tickets and node entries as they are before the call.
        cfg = self.ln.db_config()
        tickets = {s: self.ln.get_ticket(s) for s in stacks}
        fees, refunds, credits = 0, [], collections.Counter()
        divides_by_zero = False  # an attester credit with cross_validation_extra_nodes_count 0: Move aborts
        if all(tickets.values()) and all(s in self.stacks for s in stacks):
            for s in stacks:
                m, t = self.stacks[s], tickets[s]
                scp, claimed = cfg.sampling_consensus_charge_permille, t.num_claimed_compute_units
                fee = money.stack_fee_amount(m.level, m.price, claimed, scp)
                fees += fee
                refunds.append((m.owner, money.stack_fee_amount(m.level, m.price, m.units - claimed, scp)))
                for attester in t.requested_attestation_nodes:
                    if attester in t.already_attested_nodes:
                        if cfg.cross_validation_extra_nodes_count == 0:
                            divides_by_zero = True
                        else:
                            credits[attester] += fee // cfg.cross_validation_extra_nodes_count
        expect = self.payout_model(node, fees, refunds, credits)
        result = self.tx(self.node_alias(node), "claim_funds", node_small_id=node, settled_ticket_ids=stacks)
        assert result is None or all(tickets.values()), "claim_funds paid a stack without a ticket"
        assert result is None or not divides_by_zero, "claim_funds paid an attester credit divided by zero"
        expect(result)

    @rule(
        picks=st.lists(st.tuples(small, claim_mode, st.integers(0, 2_000_000)), min_size=1, max_size=4),
        wrong_node=small,
        drop_one=st.booleans(),
    )
    def claim_funds_for_stacks(self, picks: list[tuple[int, str, int]], wrong_node: int, drop_one: bool) -> None:
        stacks, amounts = [], []
        for p, mode, amount in picks:
            stack = self.stack_where(p, lambda m: m.level == SecurityLevel.CONFIDENTIAL_COMPUTE)
            units = self.stacks[stack].units if stack in self.stacks else 1_000
            stacks.append(stack)
            amounts.append({"zero": 0, "some": units // 3, "all": units, "over": units + 1, "random": amount}[mode])
        if drop_one and amounts and wrong_node == 0:
            amounts.pop()  # mismatched lengths: EInvalidNumClaimedComputeUnitsPerStack
        first = self.stacks.get(stacks[0]) if stacks else None
        node = first.node if first and wrong_node < 5 else self.node_id(wrong_node)
        fees, refunds = 0, []
        if all(s in self.stacks for s in stacks):  # §4.14 reference payouts
            for s, claimed in zip(stacks, amounts):
                m = self.stacks[s]
                fees += money.confidential_claim_amount(m.price, claimed)
                refunds.append((m.owner, money.confidential_claim_amount(m.price, max(m.units - claimed, 0))))
        expect = self.payout_model(node, fees, refunds)
        expect(self.tx(self.node_alias(node), "claim_funds_for_stacks", node_small_id=node, stack_small_ids=stacks,
                       num_compute_units_per_stack_to_claim=amounts))

    # ------------------------------------------------------------------ §4.18 admin
    @rule(
        setter=st.sampled_from(
            [
                ("set_cross_validation_probability_permille", (0, 10, 500, 1000, 1000, 1001)),
                ("set_cross_validation_extra_nodes_count", (0, 1, 1, 2, 3, 2**40)),
                ("set_sampling_consensus_charge_permille", (0, 1000, 1200, 5000)),
                ("set_cross_validation_extra_nodes_charge_permille", (0, 12, 1000)),
                ("set_permille_to_slash_node_on_timeout", (0, 100, 1000, 1001)),
                ("set_permille_for_oracle_on_dispute", (0, 100, 800, 801, 1001)),
                ("set_permille_for_honest_nodes_on_dispute", (0, 200, 900, 901)),
                ("set_required_registration_toma_collateral", (0, 5, U64_MAX)),
            ]
        ),
        k=st.integers(0, 5),
    )
    def admin_setter(self, setter: tuple[str, tuple[int, ...]], k: int) -> None:
        name, values = setter
        self.tx("admin", name, value=values[k % len(values)])

    @rule(enable=st.booleans())
    def toggle_registration(self, enable: bool) -> None:
        self.tx("admin", "enable_registration" if enable else "disable_registration")

    # ------------------------------------------------------------------ refused: someone else's badge
    def _refused(self, sender: str, function: str, args: dict[str, Any]) -> None:
        prepared = run_sync(self.chain.prepare(sender, function, args))
        before = self.ln.state_digest()
        with pytest.raises(TransactionRejected):
            self.ln.execute(prepared.tx_bytes, [self.chain.sign(prepared)])
        assert self.ln.state_digest() == before
        assert self.ln.get_transaction(prepared.digest) is None  # refused transactions are not recorded
        self.env.stats[f"{function}: rejected (foreign badge)"] += 1

    @rule(sender=st.sampled_from(NODE_ALIASES + ("user",)), value=st.integers(0, 2000))
    def non_admin_uses_manager_badge(self, sender: str, value: int) -> None:
        badge = next(b for b in self.ln.badges(self.addr["admin"]) if b.kind == "AtomaManagerBadge")
        self._refused(sender, "set_cross_validation_probability_permille", {"badge": badge.object_id, "value": value})

    @rule(n=small, thief=st.sampled_from(NODE_ALIASES),
          function=st.sampled_from(["withdraw_fees", "claim_funds", "permanently_disable_node", "try_settle_stack"]))
    def use_foreign_node_badge(self, n: int, thief: str, function: str) -> None:
        node = self.node_id(n)
        owner = self.node_owner.get(node)
        if owner is None or owner == thief:
            return
        badges = [b for b in self.ln.badges(self.addr[owner]) if b.kind == "NodeBadge" and b.small_id == node]
        if not badges:
            return
        args: dict[str, Any] = {"node_badge": badges[0].object_id}
        if function == "claim_funds":
            args["settled_ticket_ids"] = sorted(s for s, m in self.stacks.items() if m.node == node)[:2]
        if function == "try_settle_stack":
            args.update(stack_small_id=self.stack_where(0, lambda m: m.node == node and not m.settled),
                        num_claimed_compute_units=0, committed_stack_proof=b"\x01" * 32, stack_merkle_leaf=b"\x02" * 32)
        self._refused(thief, function, args)

    # ------------------------------------------------------------------ localnet-only
    @rule(to=st.sampled_from(ALIASES), amount=st.one_of(st.integers(0, 10**13), st.just(U64_MAX)))
    def faucet_mint(self, to: str, amount: int) -> None:
        before = self.ln.state_digest()
        try:
            result = self.ln.faucet_mint(self.addr[to], amount)
        except InvalidArgument:
            assert amount == 0 or self.minted + amount > U64_MAX
            assert self.ln.state_digest() == before
            return
        self.minted += amount
        assert result.balance_changes == {self.addr[to]: amount}

    @rule(count=st.sampled_from([1, 1, 1, 2, 4]))
    def advance_epoch(self, count: int) -> None:
        epoch = self.ln.current_epoch()
        assert self.ln.advance_epoch(count) == epoch + count

    # ------------------------------------------------------------------ invariants
    @invariant()
    def usdc_is_conserved(self) -> None:
        t = self.ln.total_usdc()
        assert t["minted"] == self.minted
        assert t["minted"] == t["coins"] + t["fee_treasury"] + t["communal_treasury"] + t["collateral"], t
        assert all(c.balance >= 0 for a in self.addr.values() for c in self.ln.usdc_coins(a))

    @invariant()
    def counters_only_grow(self) -> None:
        cfg = self.ln.db_config()
        for key in COUNTERS:
            value = getattr(cfg, key)
            assert value >= self.counters[key], f"{key} went down"
            self.counters[key] = value
        assert cfg.next_stack_small_id == 1 + len(self.stacks)
        assert cfg.next_node_small_id == 1 + len(self.node_owner)
        assert cfg.next_task_small_id == 1 + len(self.task_level)

    @invariant()
    def stacks_and_tickets_match_the_model(self) -> None:
        live = {s.stack_small_id: s for s in self.ln.list_stacks()}
        for sid_, stack in live.items():
            model = self.stacks[sid_]
            chain_view = (stack.owner, stack.num_compute_units, stack.price_per_one_million_compute_units,
                          stack.selected_node_id, stack.task_small_id)
            assert chain_view == (model.owner, model.units, model.price, model.node, model.task)
            assert stack.is_claimed == (model.payouts == 1), f"stack {sid_}: is_claimed vs payouts"
        for sid_, model in self.stacks.items():
            assert model.payouts <= 1
            if sid_ not in live:
                assert model.payouts == 1, f"stack {sid_} vanished without a payout"
        for ticket in self.ln.list_tickets():
            stack = live.get(ticket.stack_small_id)
            assert stack is not None, f"ticket {ticket.stack_small_id} without its stack"
            assert ticket.num_claimed_compute_units <= stack.num_compute_units
            assert ticket.selected_node_id == stack.selected_node_id
            assert len(ticket.committed_stack_proof) == 32


@pytest.mark.slow
def test_localnet_state_machine(sm_env: Env) -> None:
    LocalnetMachine.env = sm_env
    run_state_machine_as_test(LocalnetMachine, settings=SETTINGS)
    stats = sm_env.stats
    summary = "\n".join(f"{v:7d}  {k}" for k, v in sorted(stats.items()))
    print(f"\nstate machine: {sm_env.counter} chains\n{summary}")
    # The run must reach deep states, not only shallow aborts: the slice those it always reaches, a long run all.
    deep = ["StackCreatedEvent", "StackSettlementTicketClaimedEvent", "StackAttestationDisputeEvent",
            "TaskRemovedEvent"]
    if EXAMPLES >= 1000:
        deep += ["StackTrySettleEvent", "ClaimedStackEvent", "NewStackSettlementAttestationEvent"]
    if EXAMPLES >= 400:
        for event in deep:
            assert stats[f"event {event}"] > 0, f"no {event} in {sm_env.counter} examples"


def test_confidential_stack_is_paid_once_across_both_claim_paths(sm_env: Env, tmp_path: Path) -> None:
    """§4.10 / §14.3: claim_funds_for_stacks, then try_settle (allowed), then claim_funds: EStackAlreadyClaimed."""
    path = tmp_path / "chain.sqlite"
    shutil.copy(sm_env.templates["seeded"], path)
    ln = Localnet(path)
    chain = LocalnetChain(ln, sm_env.wallet)

    def call(sender: str, function: str, **args: Any):
        prepared = run_sync(chain.prepare(sender, function, args))
        return ln.execute(prepared.tx_bytes, [chain.sign(prepared)])

    try:
        stack = ln.get_stack(2)  # ConfidentialCompute, 1e6 units at 1e6 per 1M: paid 1 USDC
        node, alias = stack.selected_node_id, NODE_ALIASES[stack.selected_node_id - 1]
        first = call(alias, "claim_funds_for_stacks", node_small_id=node, stack_small_ids=[2],
                     num_compute_units_per_stack_to_claim=[250_000])
        assert [e.name for e in first.events] == ["ClaimedStackEvent"]
        assert first.events[0].parsed_json["user_refund_amount"] == "750000"
        assert ln.get_stack(2).is_claimed
        root = template_root(2)
        call(alias, "try_settle_stack", node_small_id=node, stack_small_id=2, num_claimed_compute_units=1_000_000,
             committed_stack_proof=committed_proof(root, 1), stack_merkle_leaf=leaf(0, root))
        ln.advance_epoch()
        before = ln.state_digest()
        with pytest.raises(MoveAbort) as err:
            call(alias, "claim_funds", node_small_id=node, settled_ticket_ids=[2])
        assert err.value.name == "EStackAlreadyClaimed"
        assert ln.state_digest() == before
        t = ln.total_usdc()
        assert t["minted"] == t["coins"] + t["fee_treasury"] + t["communal_treasury"] + t["collateral"]
    finally:
        ln.close()
