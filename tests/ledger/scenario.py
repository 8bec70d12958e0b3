"""A real localnet driven through every stage the ledger accounts for, with figures worked out by hand from
atoma-protocol.md §6 (never from the ledger's own output).

Tasks: 1 NoSecurity, 2 ConfidentialCompute, 3 SamplingConsensus (attestation lottery forced: probability 1000‰).
Nodes: node-1 (1), node-2 (2), node-3 (3). Subscriptions (ask 1_000 each): task 1 → [1, 3]; task 2 → [2];
task 3 → [1, 3]. The scripted RNG picks eligible[draw % n].

Epoch 0 — the user (100 USDC) buys:
  A task 1, 1_000_000 units @ 1_000_000 → node-1, pays floor(1e6·1e6/1e6)            = 1_000_000
  B task 2,   500_000 units @ 2_000_000 → node-2, pays floor(5e5·2e6/1e6)            = 1_000_000
  C task 3, 1_000_000 units @ 1_000_000 → node-1, pays 1_000_000·1212/1000           = 1_212_000
  D task 1,   100_000 units @ 1_000_000 → node-3, pays                                =   100_000
  E task 3, 1_000_000 units @ 1_000_000 → node-3, pays                                = 1_212_000
  F task 1,   300_000 units @ 1_000_000 → node-1, pays                                =   300_000
  G task 1,   200_000 units @   500_000 → node-1, pays floor(5e5·2e5/1e6)            =   100_000
  settle A (node-1, 400_000 claimed); settle C (node-1, 500_000, attester drawn: node-3), node-3 attests C with
  the honest leaf_1 (ticket complete); settle D (node-3, 100_000); settle E (node-3, 700_000, attester node-1),
  node-1 attests E with another proof ⇒ dispute (terminal); node-2 claims B on the confidential path: 250_000 units
  ⇒ node fee floor(2.5e5·2e6/1e6) = 500_000, refund floor(2.5e5·2e6/1e6) = 500_000.
Epoch 1:
  settle F (node-1, 300_000) ⇒ dispute_settled_at_epoch 2 (claimable from 2, attestations accepted up to 2);
  node-1 claims A and C in one claim_funds:
    A: node fee floor(4e5·1e6/1e6) = 400_000, refund floor(6e5·1e6/1e6) = 600_000
    C: node fee floor(5e5·1e6·1200/1e9) = 600_000, refund floor(5e5·1e6·1200/1e9) = 600_000,
       node-3 credited node_fee / extra_nodes_count = 600_000 (available_fee_amount; no funds reserved)
    ⇒ node-1 receives 1_000_000, the user 1_200_000;
  node-3 claims D: node fee 100_000, refund 0, then withdraw_fees pays its 600_000 credit ⇒ node-3 receives 700_000.
G is never settled.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path


from tests.chain.chainkit import CONFIDENTIAL, NO_SECURITY, SAMPLING, Net, h, honest_commitment  # noqa: E402

from atoma_ops.home import LocalnetHome  # noqa: E402

USDC = 1_000_000
MINTED = 100 * USDC


class Draws:
    def __init__(self, default: int = 0):
        self.queue: deque[int] = deque()
        self.default = default

    def push(self, *values: int) -> "Draws":
        self.queue.extend(values)
        return self

    def __call__(self) -> int:
        return self.queue.popleft() if self.queue else self.default


# ---- figures by hand (see the module docstring)
PAID = {"A": 1_000_000, "B": 1_000_000, "C": 1_212_000, "D": 100_000, "E": 1_212_000, "F": 300_000, "G": 100_000}
NODE_FEE = {"A": 400_000, "B": 500_000, "C": 600_000, "D": 100_000}
REFUND = {"A": 600_000, "B": 500_000, "C": 600_000, "D": 0}
CREDIT_NODE3 = 600_000
PAID_IN = sum(PAID.values())                                       # 4_924_000
PAID_OUT = sum(NODE_FEE.values()) + sum(REFUND.values()) + CREDIT_NODE3  # 3_900_000
TREASURY = PAID_IN - PAID_OUT                                      # 1_024_000


@dataclass
class Built:
    home: LocalnetHome
    net: Net
    ids: dict  # letter -> stack small id
    tasks: dict  # "nosec"/"cc"/"sc" -> task small id

    def close(self) -> None:
        self.net.close()
        self.net.chain.localnet.close()


def open_net(home: LocalnetHome) -> Net:
    draws = Draws()
    return Net(home.open(rng=draws), draws)


def build(root: Path, *, claim_d: bool = True) -> Built:
    home = LocalnetHome(root / "localnet")
    ln, _ = home.init(seed=7)
    ln.close()
    net = open_net(home)
    t1, t2, t3 = net.task(NO_SECURITY), net.task(CONFIDENTIAL), net.task(SAMPLING)
    for alias in ("node-1", "node-2", "node-3"):
        net.node(alias)
    net.sub("node-1", t1)
    net.sub("node-3", t1)
    net.sub("node-2", t2)
    net.sub("node-1", t3)
    net.sub("node-3", t3)
    net.force_attestation()
    net.mint("user", MINTED)
    ids = {
        "A": net.buy(t1, 1_000_000, 1_000_000, draw=0),
        "B": net.buy(t2, 500_000, 2_000_000, draw=0),
        "C": net.buy(t3, 1_000_000, 1_000_000, draw=0),
        "D": net.buy(t1, 100_000, 1_000_000, draw=1),
        "E": net.buy(t3, 1_000_000, 1_000_000, draw=1),
        "F": net.buy(t1, 300_000, 1_000_000, draw=0),
        "G": net.buy(t1, 200_000, 500_000, draw=0),
    }
    net.settle("node-1", ids["A"], 400_000)
    proof_c, leaves_c = honest_commitment(h(b"stack C history"), extra=1)
    net.draws.push(0, 1)  # lottery (always fires at 1000‰), then the attester: eligible [1, 3][1] = node-3
    net.settle("node-1", ids["C"], 500_000, proof=proof_c, leaf=leaves_c[0])
    net.attest("node-3", ids["C"], proof_c, leaves_c[1])
    net.settle("node-3", ids["D"], 100_000)
    proof_e, leaves_e = honest_commitment(h(b"stack E history"), extra=1)
    net.draws.push(0, 0)  # attester node-1
    net.settle("node-3", ids["E"], 700_000, proof=proof_e, leaf=leaves_e[0])
    net.attest("node-1", ids["E"], h(b"another history"), leaves_e[1])  # proof mismatch ⇒ dispute
    net.claim_cc("node-2", [ids["B"]], [250_000])
    net.epoch(1)
    net.settle("node-1", ids["F"], 300_000)
    net.claim("node-1", ids["A"], ids["C"])
    if claim_d:
        net.claim("node-3", ids["D"])
    return Built(home, net, ids, {"nosec": t1, "cc": t2, "sc": t3})
