"""``attestation_watch``: answer the contract's requests for this wallet's nodes to attest, before the window shuts."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.logging import get_run_logger

from prefect.variables import Variable

from atoma_ops import lifecycle
from blocks import AtomaNetwork, InferenceEngine, Ledger, SuiWallet
from tasks import node as node_tasks
from tasks import watch
from tasks.events import emit
from tasks.labels import RunLabels, artifact_key
from tasks.runtime import FLOW_TIMEOUT_S, REPLAY_TIMEOUT_S, network_or_default

from .settlement import _wallet_nodes


_WATCH = RunLabels("attestation-watch", network="network", node="nodes")


@flow(name="attestation-watch", flow_run_name=_WATCH.name, timeout_seconds=REPLAY_TIMEOUT_S + FLOW_TIMEOUT_S)
@_WATCH.tagged
async def attestation_watch(
    nodes: list[str] | None = None,
    history_dir: str | None = None,
    network: AtomaNetwork | None = None,
    wallet: SuiWallet | None = None,
    ledger: Ledger | None = None,
    engine: InferenceEngine | None = None,
    history_urls: list[str] | None = None,
) -> list[dict]:
    """Find tickets that request one of the wallet's nodes to attest, fetch each stack's history, replay it and
    submit the attestation. A request whose window has closed, or whose history cannot be found, fails the run
    loudly with an artifact saying why. ``history_urls``: node servers to read histories from over HTTP (the
    first that has the stack's; signed with the attesting node's key) instead of ``history_dir`` / the local
    node stores."""
    network = network_or_default(network)
    engine = engine or InferenceEngine()
    nodes = nodes if nodes is not None else await _wallet_nodes(network, wallet)
    found = await node_tasks.find_attestation_requests(network, wallet, ledger, nodes)
    log = get_run_logger()
    log.info("epoch %s: %d attestation request(s) for %s", found["epoch"], len(found["requests"]), ", ".join(nodes))
    for r in found["requests"]:
        emit("atoma.attestation.requested", network, kind="stack", id=r["stack_small_id"],
             name=f"stack {r['stack_small_id']}", node=r["node"],
             payload={"stack_small_id": r["stack_small_id"], "node": r["node"], "last_epoch": r["last_epoch"],
                      "epoch": found["epoch"]})
    done, problems = [], []
    for request in found["requests"]:
        stack, node = request["stack_small_id"], request["node"]
        if not request["window_open"]:
            problems.append({**request, "why": f"the attestation window closed at epoch {request['last_epoch']} (now {found['epoch']})"})
            continue
        try:
            if history_urls:
                history = await node_tasks.fetch_history(network, wallet, node, stack, history_urls)
            else:
                history = lifecycle.find_history(stack, home=network.home, history_dir=history_dir)
            replayed = await node_tasks.replay_stack(network, engine, stack, history.root.hex(), history_dir, history)
            attested = await node_tasks.attest_stack(network, wallet, ledger, node, stack, replayed)
        except lifecycle.StageError as exc:
            problems.append({**request, "why": str(exc)})
            continue
        except Exception as exc:  # noqa: BLE001 - reported below, and the run fails
            problems.append({**request, "why": f"{type(exc).__name__}: {exc}"})
            continue
        done.append({**request, "status": attested.status, "disputed": attested.disputed, "digest": attested.digest})
        log.info(
            "stack %s, node %s: attested (%s%s, %s)", stack, node, attested.status,
            ", disputed" if attested.disputed else "", attested.digest,
        )
    await _report_unmade(network, found["epoch"], problems)
    await _report_disputes(network, wallet, ledger, nodes)
    for p in problems:
        log.error("stack %s, node %s: could not attest: %s", p["stack_small_id"], p["node"], p["why"])

    await acreate_table_artifact(
        done or [{"stack_small_id": None, "status": "no attestation requested"}],
        key=artifact_key(network, "attestation-watch"),
        description=f"Attestations submitted (epoch {found['epoch']})",
    )
    if problems:
        await acreate_markdown_artifact(
            "# Attestations that could not be made\n\n"
            + "\n".join(f"- stack {p['stack_small_id']}, node {p['node']}: {p['why']}" for p in problems),
            key=artifact_key(network, "attestation-watch-problems"),
            description="Why the attestation watch failed",
        )
        raise lifecycle.StageError(f"{len(problems)} attestation(s) could not be made: {problems[0]['why']}")
    return done


async def _report_unmade(network: AtomaNetwork, epoch: int, problems: list[dict]) -> None:
    """``atoma.attestation.window-closing`` for each attestation not made whose window closes within the
    ``atoma_ops_attestation_warn_epochs`` threshold (or has closed)."""
    for p in problems:
        warn = await watch.threshold("atoma_ops_attestation_warn_epochs", network, (p["node"],))
        left = p["last_epoch"] - epoch
        if left <= warn:
            emit("atoma.attestation.window-closing", network, kind="stack", id=p["stack_small_id"],
                 name=f"stack {p['stack_small_id']}", node=p["node"],
                 payload={"stack_small_id": p["stack_small_id"], "node": p["node"], "last_epoch": p["last_epoch"],
                          "epoch": epoch, "epochs_left": left, "closed": left < 0, "why": p["why"]})


async def _report_disputes(network: AtomaNetwork, wallet: SuiWallet | None, ledger: Ledger | None, nodes: list[str]) -> None:
    """``atoma.dispute.opened`` once per dispute on a stack one of ``nodes`` served (against us) or attested (by
    us), from the ledger the watch just synced; the last dispute told is kept in a Prefect Variable per network."""
    cursors = await Variable.aget(watch.DISPUTE_CURSOR, default={}) or {}
    key = watch.network_key(network)
    after = int(cursors.get(key, -1)) if isinstance(cursors, dict) else -1
    new = await watch.disputes_after(network, wallet, ledger, after)
    if not new:
        return
    ours = await watch.node_ids(network, wallet, nodes)
    for d in new:
        against, by = d["original_node_id"] in ours, d["attestation_node_id"] in ours
        if not (against or by):
            continue
        node = ours.get(d["original_node_id"] if against else d["attestation_node_id"])
        emit("atoma.dispute.opened", network, kind="stack", id=d["stack_small_id"], name=f"stack {d['stack_small_id']}",
             node=node, payload={**d, "node": node, "against_us": against, "by_us": by})
    await Variable.aset(watch.DISPUTE_CURSOR, {**(cursors if isinstance(cursors, dict) else {}), key: new[-1]["seq"]},
                        overwrite=True)
