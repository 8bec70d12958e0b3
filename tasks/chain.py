"""Chain-writing tasks of the buyer's and the admin's stages, and waiting for an epoch."""

from __future__ import annotations

from prefect import task
from prefect.logging import get_run_logger

from atoma_ops import lifecycle
from blocks import AtomaNetwork, Ledger, SuiWallet

from .labels import RunLabels, usdc
from .runtime import CHAIN_WRITE, READ, journal_for, open_chain
from .signer import signer_turn


@task(name="mint-usdc", task_run_name=RunLabels("mint-usdc", account="recipient").name, **CHAIN_WRITE)
async def mint_usdc(
    network: AtomaNetwork, wallet: SuiWallet | None, ledger: Ledger | None, recipient: str, amount: int,
    key: str | None = None,
) -> lifecycle.MintReport:
    """Top ``recipient`` up to ``amount`` USDC base units (localnet faucet; on Sui, says what to get from Circle).

    Args:
        network: the Atoma deployment.
        wallet: the signing wallet (None: the localnet home's).
        recipient: alias or address.
        amount: the balance wanted, in USDC base units.
        key: top up once per key (journaled), however the balance moves afterwards.
    """
    async with open_chain(network, wallet) as chain:
        report = await lifecycle.mint_usdc(chain, recipient, amount, journal=journal_for(network, ledger), key=key)
    get_run_logger().info("%s holds %s (minted %s)", recipient, usdc(report.balance_after), usdc(report.minted))
    return report


@task(name="create-task", task_run_name=RunLabels("create-task", account="admin").name, **CHAIN_WRITE)
async def create_task(
    network: AtomaNetwork, wallet: SuiWallet | None, ledger: Ledger | None, admin: str, key: str, **task_fields
) -> int:
    """``create_task_entry`` once per ``key``; returns the task's small id."""
    async with open_chain(network, wallet) as chain, signer_turn(chain.wallet.resolve(admin)):
        return await lifecycle.create_task(chain, journal_for(network, ledger), admin, key=key, **task_fields)


@task(name="set-cross-validation", task_run_name=RunLabels("set-cross-validation", account="admin").name, **CHAIN_WRITE)
async def set_cross_validation(
    network: AtomaNetwork, wallet: SuiWallet | None, ledger: Ledger | None, admin: str,
    probability_permille: int | None, extra_nodes_count: int | None,
) -> dict:
    """The admin's Sampling Consensus settings (values already in place are skipped)."""
    async with open_chain(network, wallet) as chain, signer_turn(chain.wallet.resolve(admin)):
        change = await lifecycle.set_cross_validation(
            chain, journal_for(network, ledger), admin,
            probability_permille=probability_permille, extra_nodes_count=extra_nodes_count,
        )
    return change.changed


@task(name="register-node", task_run_name=RunLabels("register-node", node="node").name, **CHAIN_WRITE)
async def register_node(network: AtomaNetwork, wallet: SuiWallet | None, ledger: Ledger | None, node: str) -> int:
    """``register_node_entry`` unless the node already holds a NodeBadge; returns its small id."""
    async with open_chain(network, wallet) as chain, signer_turn(chain.wallet.resolve(node)):
        return await lifecycle.register_node(chain, journal_for(network, ledger), node)


@task(
    name="subscribe-node",
    task_run_name=RunLabels("subscribe-node", task="task_small_id", node="node").name,
    **CHAIN_WRITE,
)
async def subscribe_node(
    network: AtomaNetwork, wallet: SuiWallet | None, ledger: Ledger | None, node: str, task_small_id: int, price: int
) -> int:
    """Subscribe (or re-price) the node on the task; returns the node's small id."""
    async with open_chain(network, wallet) as chain, signer_turn(chain.wallet.resolve(node)):
        return await lifecycle.subscribe_node(chain, journal_for(network, ledger), node, task_small_id=task_small_id, price=price)


@task(name="buy-stack", task_run_name=RunLabels("buy-stack", task="task_small_id", account="buyer").name, **CHAIN_WRITE)
async def buy_stack(
    network: AtomaNetwork, wallet: SuiWallet | None, ledger: Ledger | None, buyer: str, key: str,
    task_small_id: int, num_compute_units: int, price: int,
) -> lifecycle.BoughtStack:
    """``acquire_new_stack_entry`` once per ``key``; returns the stack and the node the contract sold it to."""
    async with open_chain(network, wallet) as chain, signer_turn(chain.wallet.resolve(buyer)):
        return await lifecycle.buy_stack(
            chain, journal_for(network, ledger), buyer, key=key, task_small_id=task_small_id,
            num_compute_units=num_compute_units, price=price,
        )


@task(name="wait-for-epoch", task_run_name=RunLabels("wait-for-epoch", suffix="epoch-{epoch}").name, **READ)
async def wait_for_epoch(network: AtomaNetwork, wallet: SuiWallet | None, epoch: int, timeout_s: float = 600.0) -> int:
    """Poll the epoch until it reaches ``epoch`` (a localnet without wall-clock epochs is advanced instead)."""
    async with open_chain(network, wallet) as chain:
        manual = network.is_localnet and chain.localnet.clock()["epoch_duration_ms"] == 0
        return await lifecycle.wait_for_epoch(
            chain, epoch, poll_s=network.epoch_poll_s, timeout_s=timeout_s, advance_localnet=manual
        )
