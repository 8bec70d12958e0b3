"""Reads behind the alarms: balances of the addresses in use, journal rows in doubt, what a settle or claim is
worth, and the thresholds, which live in Prefect Variables so an operator changes them in the UI without a deploy.

Thresholds (Variable name → meaning; a number, or a JSON object ``{"<alias or address>": n, "default": n}`` for one
value per address):

- ``atoma_ops_min_sui``: SUI (in MIST) an address must hold for gas (default 1 SUI; the localnet charges none);
- ``atoma_ops_min_usdc``: USDC base units an address must hold (default 0: only the buyers spend USDC; set it per
  buyer, e.g. ``{"user": 5000000}``);
- ``atoma_ops_attestation_warn_epochs``: warn when an attestation our node owes closes within this many epochs
  (default 0: in the last epoch it is accepted);
- ``atoma_ops_min_settle_value``: settlement skips settles and claims whose node fee (USDC base units) is less
  (default: 0 on the localnet, which charges no gas; on Sui ``SUI_MIN_SETTLE_VALUE``, about the gas of one call).
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import task
from prefect.variables import Variable

from atoma_ops.journal import PENDING
from atoma_ops.protocol import money
from atoma_ops.protocol.constants import SecurityLevel
from blocks import AtomaNetwork, Ledger, SuiWallet

from .labels import RunLabels
from .runtime import READ, journal_for, ledger_for, open_chain

#: on Sui, a settle or claim worth less than this many USDC base units (0.02 USDC) costs more gas than it pays: a
#: Move call costs ~0.003-0.006 SUI at the reference gas price, a few US cents at recent SUI prices. Set
#: ``atoma_ops_min_settle_value`` to your own figure.
SUI_MIN_SETTLE_VALUE = 20_000

#: Variable name → (localnet default, Sui default)
THRESHOLDS: dict[str, tuple[int, int]] = {
    "atoma_ops_min_sui": (0, 1_000_000_000),
    "atoma_ops_min_usdc": (0, 0),
    "atoma_ops_attestation_warn_epochs": (0, 0),
    "atoma_ops_min_settle_value": (0, SUI_MIN_SETTLE_VALUE),
}


class ThresholdError(ValueError):
    """A threshold Variable holds something other than a non-negative integer (or an object of them)."""


async def threshold(name: str, network: AtomaNetwork, who: tuple[str, ...] = ()) -> int:
    """The threshold ``name`` for the address known as any of ``who`` (alias, address), from its Prefect Variable,
    else the network's default."""
    default = THRESHOLDS[name][0 if network.is_localnet else 1]
    value: Any = await Variable.aget(name, default=None)
    if isinstance(value, dict):
        value = next((value[w] for w in who if w in value), value.get("default", default))
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ThresholdError(f"Prefect Variable {name} must be a non-negative integer (or an object of them), not {value!r}")
    return value


@task(name="read-balances", task_run_name=RunLabels("read-balances", network="network").name, **READ)
async def balances(network: AtomaNetwork, wallet: SuiWallet | None) -> list[dict]:
    """SUI (MIST; None on the localnet) and USDC (base units) of every address of the wallet."""
    async with open_chain(network, wallet) as chain:
        out = []
        for account in chain.wallet.accounts():
            sui, usdc = await asyncio.gather(chain.gas_balance(account.address), chain.usdc_balance(account.address))
            out.append({"alias": account.alias, "address": account.address, "sui": sui, "usdc": usdc})
        return out


@task(name="intents-in-doubt", task_run_name=RunLabels("intents-in-doubt", network="network").name, **READ)
async def intents_in_doubt(network: AtomaNetwork, ledger: Ledger | None) -> list[dict]:
    """Journal rows a crash left ``pending``: signed, maybe submitted, outcome unknown (a run resolves them by
    digest)."""
    rows = await asyncio.to_thread(journal_for(network, ledger).actions, statuses=[PENDING])
    return [{"key": k, "kind": r["kind"], "sender": r["sender"], "digest": r["digest"]} for k, r in sorted(rows.items())]


@task(name="stack-values", task_run_name=RunLabels("stack-values", stack="items").name, **READ)
async def stack_values(network: AtomaNetwork, wallet: SuiWallet | None, items: list[tuple[int, int | None]]) -> dict[int, int]:
    """What settling or claiming each stack pays its node, in USDC base units: ``(stack, units)`` with units None
    for a settled ticket (its claimed units). A stack gone from chain is worth 0."""
    out: dict[int, int] = {}
    async with open_chain(network, wallet) as chain:
        config = await chain.db_config()
        tasks: dict[int, Any] = {}
        for sid, units in items:
            stack = await chain.get_stack(sid)
            if stack is None:
                out[sid] = 0
                continue
            if stack.task_small_id not in tasks:
                tasks[stack.task_small_id] = await chain.get_task(stack.task_small_id)
            level = tasks[stack.task_small_id].security_level if tasks[stack.task_small_id] else 0
            if units is None:
                ticket = await chain.get_ticket(sid)
                units = ticket.num_claimed_compute_units if ticket else 0
            price = stack.price_per_one_million_compute_units
            out[sid] = (
                money.confidential_claim_amount(price, units) if level == SecurityLevel.CONFIDENTIAL_COMPUTE
                else money.stack_fee_amount(level, price, units, config.sampling_consensus_charge_permille)
            )
    return out


@task(name="our-node-ids", task_run_name=RunLabels("our-node-ids", node="nodes").name, **READ)
async def node_ids(network: AtomaNetwork, wallet: SuiWallet | None, nodes: list[str]) -> dict[int, str]:
    """The NodeBadge small ids of ``nodes`` (aliases or addresses of the wallet): ``{small id: node}``."""
    from atoma_ops import lifecycle

    async with open_chain(network, wallet) as chain:
        out: dict[int, str] = {}
        for n in nodes:
            for sid in await lifecycle.node_small_ids(chain, chain.wallet.resolve(n)):
                out[sid] = n
        return out


@task(
    name="disputes-after",
    task_run_name=RunLabels("disputes-after", network="network", suffix="after-{after_seq}").name,
    **READ,
)
async def disputes_after(network: AtomaNetwork, wallet: SuiWallet | None, ledger: Ledger | None, after_seq: int) -> list[dict]:
    """Disputes recorded after ledger event ``after_seq``, oldest first (the ledger is synced first, so a dispute
    that the caller's own attestation just opened is in)."""
    book = ledger_for(network, ledger)
    async with open_chain(network, wallet) as chain:
        await book.sync(chain)
    df = book.query(
        "SELECT stack_small_id, seq, attestation_node_id, original_node_id, epoch, cause, tx_digest FROM disputes "
        "WHERE seq > $1 ORDER BY seq", [after_seq],
    )
    return [{k: (None if v is None or v != v else (v.item() if hasattr(v, "item") else v)) for k, v in r.items()}
            for r in df.to_dict("records")]


#: a Prefect Variable: the last dispute (ledger event seq) told to the operator, per network
DISPUTE_CURSOR = "atoma_ops_dispute_cursor"


def network_key(network: AtomaNetwork) -> str:
    """One network's key in cursors: its AtomaDb object on Sui, its home folder on the localnet."""
    return network.db_id if not network.is_localnet and network.db_id else f"localnet:{network.home_path.resolve()}"
