"""``balance_watch``: find short balances before a transaction does. Every address of the wallet is read (SUI for
gas, USDC) and compared with its thresholds (Prefect Variables ``atoma_ops_min_sui`` and ``atoma_ops_min_usdc``,
see ``tasks.watch``); each one below emits ``atoma.balance.low``, which the automations route to the team."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import acreate_table_artifact
from prefect.logging import get_run_logger

from blocks import AtomaNetwork, SuiWallet
from tasks import watch
from tasks.events import emit
from tasks.labels import RunLabels, artifact_key, usdc
from tasks.runtime import FLOW_TIMEOUT_S, network_or_default

_RUN = RunLabels("balance-watch", network="network")


@flow(name="balance-watch", flow_run_name=_RUN.name, timeout_seconds=FLOW_TIMEOUT_S)
@_RUN.tagged
async def balance_watch(network: AtomaNetwork | None = None, wallet: SuiWallet | None = None) -> list[dict]:
    """Read the SUI and USDC of every address of the wallet; emit ``atoma.balance.low`` for each balance below its
    threshold. Returns one row per address and coin that is short."""
    network = network_or_default(network)
    rows = await watch.balances(network, wallet)
    low, table = [], []
    for r in rows:
        who = tuple(w for w in (r["alias"], r["address"]) if w)
        min_sui = await watch.threshold("atoma_ops_min_sui", network, who)
        min_usdc = await watch.threshold("atoma_ops_min_usdc", network, who)
        short = []
        if r["sui"] is not None and r["sui"] < min_sui:
            short.append(("SUI", r["sui"], min_sui))
        if r["usdc"] < min_usdc:
            short.append(("USDC", r["usdc"], min_usdc))
        for coin, balance, minimum in short:
            item = {"address": r["address"], "alias": r["alias"], "coin": coin, "balance": balance, "threshold": minimum}
            low.append(item)
            emit("atoma.balance.low", network, kind="address", id=r["address"], name=r["alias"] or r["address"],
                 payload=item)
        table.append({
            "alias": r["alias"], "address": r["address"],
            "sui": "no gas on the localnet" if r["sui"] is None else f"{r['sui'] / 1e9:.9f} SUI ({r['sui']} MIST)",
            "usdc": usdc(r["usdc"]), "short": ", ".join(f"{c} below {m}" for c, _, m in short) or "",
        })
    log = get_run_logger()
    log.info("%d address(es) read, %d balance(s) below threshold", len(rows), len(low))
    for item in low:
        log.warning("%s holds %d %s (base units), below %d", item["alias"] or item["address"], item["balance"],
                    item["coin"], item["threshold"])
    await acreate_table_artifact(table, key=artifact_key(network, "balance-watch"),
                                 description="Balances of the wallet's addresses (thresholds: Prefect Variables)")
    return low
