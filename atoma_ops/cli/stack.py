"""``atoma-ops stack …``: serve, inspect, commit, settle, replay and attest one stack (the node's side of the
lifecycle). A new stack command is one more ``@stack_app.command`` here, using ``serving.with_node``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import typer

from .core import Render, State, console, esc, note, run, sub_app
from .errors import CliInputError
from .inputs import input_text_file, output_file
from .serving import (
    BASE_URL_OPT, ENGINE_OPT, MODEL_OPT, NODE_OPT, NODE_SMALL_ID_PICK_OPT, engine_loader, usage_lines, with_node,
)
from .session import Session, render_tx

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

stack_app = sub_app("Serve, inspect, commit, settle, replay and attest one stack (the node's side of the lifecycle).")


@stack_app.command("serve")
def stack_serve(
    ctx: typer.Context,
    stack: int = typer.Option(..., "--stack", metavar="N", help="Stack small id."),
    workload: str = typer.Option(..., "--workload", metavar="FILE.jsonl", help="One chat request per line."),
    url: Optional[str] = typer.Option(
        None, "--url", metavar="URL",
        help="Send to this running node (e.g. http://127.0.0.1:8000); default: the stack's node, its HTTP server "
             "started here on a free loopback port.",
    ),
    buyer: Optional[str] = typer.Option(
        None, "--buyer", metavar="ALIAS|0x…", help="Who signs the requests (default: the stack's owner, from the wallet)."
    ),
    node: Optional[str] = NODE_OPT,
    engine: str = ENGINE_OPT,
    openai_base_url: Optional[str] = BASE_URL_OPT,
    model: Optional[str] = MODEL_OPT,
    concurrency: Optional[int] = typer.Option(
        None, "--concurrency", metavar="N", help="Requests in progress at once (default 8)."
    ),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", metavar="N", hidden=True, help="Deprecated alias of --concurrency."
    ),
    node_small_id: Optional[int] = NODE_SMALL_ID_PICK_OPT,
) -> None:
    """Send a workload of chat requests to the stack's node as its buyer does (over HTTP, each request signed with
    the buyer's key, each answer's signature checked), CONCURRENCY at once; print the units used and left.
    Resumable: each line carries a request id of the workload's content, so a re-run (after a kill, a refusal or a
    finished run) is answered from the node's record for the lines served or refused before, never charged twice."""

    def produce(state: State) -> tuple[Any, Render]:
        from ..serving.workload import load_workload

        input_text_file("--workload", workload)
        requests = load_workload(workload)
        if batch_size is not None:
            note(state, "--batch-size is deprecated (nothing is batched any more): use --concurrency")
        width = concurrency if concurrency is not None else batch_size if batch_size is not None else 8
        if width < 1:
            raise CliInputError("--concurrency must be >= 1")
        if url is not None:
            if node is not None or node_small_id is not None:
                raise CliInputError("--url sends to a running node: --node / --node-small-id name a local one")
            doc = _serve_remote(state, url, buyer, stack, requests, width)
            return doc, lambda con: _render_served(con, doc)
        load = engine_loader(state, engine, openai_base_url, model)

        async def action(service: Any) -> dict:
            from ..lifecycle import buyer_signer

            signer = await buyer_signer(service.chain, stack, buyer)
            return await _serve_workload(state, service, signer, stack, requests, width,
                                         node_small_id=service.node_small_id)

        doc = with_node(state, node, stack, node_small_id, action, engine=load, precheck=True)
        return doc, lambda con: _render_served(con, doc)

    run(ctx, produce)


def _serve_remote(state: State, url: str, buyer: Optional[str], stack: int, requests: list, width: int) -> dict:
    """``stack serve --url``: the node says who it is (``GET /health``), the chain says whether that address holds
    the badge of the node the stack was sold to; only then is the workload sent, every answer signed by it."""
    import asyncio

    from ..client.buyer import node_address, node_of_stack, node_root
    from ..lifecycle import buyer_signer
    from .session import open_chain

    node_root(url)  # a malformed URL is refused before the chain is opened

    async def main() -> dict:
        chain = await open_chain(state)
        try:
            signer = await buyer_signer(chain, stack, buyer)
            address = await node_address(url)
            node_small_id = await node_of_stack(chain, stack, address)
            return await _serve_workload(state, url, signer, stack, requests, width, node_small_id=node_small_id,
                                         node_address=address)
        finally:
            await chain.close()

    return asyncio.run(main())


async def _serve_workload(state: State, node: Any, signer: Any, stack: int, requests: list, concurrency: int, *,
                          node_small_id: int, node_address: Optional[str] = None) -> dict:
    """``lifecycle.serve_workload`` with a transient progress bar on stderr (not under --json); the JSON document
    of ``stack serve``."""
    import time
    from contextlib import nullcontext

    from ..lifecycle import serve_workload

    progress: Any = None
    if not state.json:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        progress = Progress(
            TextColumn("[dim]stack {task.fields[stack]}[/]"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"), TimeElapsedColumn(),
            console=console(stderr=True), transient=True,
        )
    counts = {"served": 0, "refused": 0, "failed": 0, "skipped": 0}
    bar = None

    def tick(what: str) -> None:
        counts[what] += 1
        if progress is not None and bar is not None:
            text = f"{counts['served']} served, {counts['refused']} refused"
            if counts["failed"]:
                text += f", {counts['failed']} failed"
            if counts["skipped"]:
                text += f", {counts['skipped']} done before"
            progress.update(bar, advance=1, counts=text)

    def landed(o: Any) -> None:
        tick("served" if o.ok else "refused" if o.final else "failed")

    t0 = time.perf_counter()
    with progress if progress is not None else nullcontext():
        if progress is not None:
            bar = progress.add_task("serve", total=len(requests), stack=stack, counts="")
        report, outcomes = await serve_workload(
            node, signer, stack, requests, concurrency=concurrency, node_address=node_address,
            on_skipped=lambda i, seen: tick("skipped"), on_outcome=landed,
        )
    wall = time.perf_counter() - t0
    return {
        "stack_small_id": stack,
        "node_small_id": node_small_id,
        "buyer": signer.address,
        "workload_id": report.workload_id,
        "requests": len(requests),
        "concurrency": concurrency,
        "served": report.served,
        "refused": len(report.refused),
        "failed": len(report.failed),
        "already_served": report.already_served,
        "already_refused": report.already_refused,
        "units_charged": report.units_charged,
        "completion_tokens": report.completion_tokens,
        "wall_s": round(wall, 3),
        "usage": report.usage,
        "outcomes": [_outcome_doc(o) for o in outcomes],
    }


def _outcome_doc(o: Any) -> dict:
    doc = o.to_json()
    if not o.ok:
        doc["retry"] = not o.final  # failed, not refused: nothing recorded, a re-run serves it again
    return doc


_SERVED_LINES = 50  # outcomes listed by a human ``stack serve``; --json has them all


def _render_served(con: "Console", doc: dict) -> None:
    skipped = doc["already_served"] + doc["already_refused"]
    line = (
        f"[green]✓[/] stack {doc['stack_small_id']} on node {doc['node_small_id']}: {doc['served']} of "
        f"{doc['requests']} request(s) served, {doc['refused']} refused"
    )
    if doc["failed"]:
        line += f", [red]{doc['failed']} failed[/] (not charged; a re-run serves them)"
    if skipped:
        line += f", {skipped} done before ({doc['already_served']} served, {doc['already_refused']} refused)"
    con.print(
        f"{line}; {doc['units_charged']} compute units charged ({doc['completion_tokens']} completion tokens in "
        f"{doc['wall_s']} s)"
    )
    shown = doc["outcomes"][:_SERVED_LINES]
    for o in shown:
        if o["ok"]:
            text = (o["content"] or "").replace("\n", " ")
            text = text if len(text) <= 60 else text[:57] + "…"
            con.print(f"  {o['index']:>3} → #{o['history_index']:<3} {o['units']:>5} units  {esc(text)}")
        else:
            message = (o.get("error") or {}).get("message", "")
            con.print(f"  {o['index']:>3} [red]{'failed' if o.get('retry') else 'refused'}[/]: {esc(message)}")
    if len(doc["outcomes"]) > len(shown):
        con.print(f"  … and {len(doc['outcomes']) - len(shown)} more (--json lists every one)")
    if doc["usage"]:
        usage_lines(con, doc["usage"])


@stack_app.command("usage")
def stack_usage(
    ctx: typer.Context,
    stack: int = typer.Option(..., "--stack", metavar="N"),
    node: Optional[str] = NODE_OPT,
    node_small_id: Optional[int] = NODE_SMALL_ID_PICK_OPT,
) -> None:
    """Units used, reserved and left on a stack, as this node metered them."""

    def produce(state: State) -> tuple[Any, Render]:
        async def action(service: Any) -> dict:
            u = service.store.usage(stack)
            if u is None:
                facts = await service.check_stack(stack)
                return {
                    "stack_small_id": stack, "num_compute_units": facts.num_compute_units, "used_units": 0,
                    "reserved_units": 0, "units_left": facts.num_compute_units, "num_requests": 0, "in_flight": 0,
                    "overrun_units": 0, "state": "open", "selected_node_id": facts.selected_node_id,
                    "task_small_id": facts.task_small_id, "settlement": None,
                }
            return u.to_json()

        doc = with_node(state, node, stack, node_small_id, action)

        def render(con: "Console") -> None:
            con.print(f"[bold]stack {stack}[/] (node {doc['selected_node_id']}, task {doc['task_small_id']})")
            usage_lines(con, doc)

        return doc, render

    run(ctx, produce)


@stack_app.command("history")
def stack_history(
    ctx: typer.Context,
    stack: int = typer.Option(..., "--stack", metavar="N"),
    export: Optional[str] = typer.Option(None, "--export", metavar="FILE", help="Write the history as JSONL (for attesters)."),
    node: Optional[str] = NODE_OPT,
    node_small_id: Optional[int] = NODE_SMALL_ID_PICK_OPT,
) -> None:
    """The stack's served requests in order (units, hashes), and the Merkle root; --export writes the file."""

    def produce(state: State) -> tuple[Any, Render]:
        if export is not None:
            output_file("--export", export)

        async def action(service: Any) -> tuple:
            from ..serving.history import export_jsonl

            history = service.history(stack)
            path = str(export_jsonl(history, export)) if export else None
            return history, path

        history, path = with_node(state, node, stack, node_small_id, action)
        root = history.root
        doc = {
            **history.header(),
            "exported_to": path,
            "entries": [
                {k: v for k, v in e.to_json().items() if k not in ("request", "response")} | {"content": e.content}
                for e in history.entries
            ],
        }

        def render(con: "Console") -> None:
            con.print(
                f"[bold]stack {stack}[/]: {len(history)} request(s), {history.units} compute units; "
                f"root {('0x' + root.hex()) if root else '—'}"
            )
            for e in history.entries:
                text = (e.content or "").replace("\n", " ")
                text = text if len(text) <= 50 else text[:47] + "…"
                con.print(f"  #{e.index:<3} {e.units:>5} units  leaf 0x{e.leaf.hex()[:16]}…  {esc(text)}")
            if path:
                con.print(f"[green]✓[/] exported to {esc(path)}")

        return doc, render

    run(ctx, produce)


@stack_app.command("commit")
def stack_commit(
    ctx: typer.Context,
    stack: int = typer.Option(..., "--stack", metavar="N"),
    node: Optional[str] = NODE_OPT,
    node_small_id: Optional[int] = NODE_SMALL_ID_PICK_OPT,
) -> None:
    """The commitment to the stack's history: R, committed_stack_proof, stack_merkle_leaf, claimed units."""

    def produce(state: State) -> tuple[Any, Render]:
        async def action(service: Any) -> dict:
            return (await service.commitment(stack)).to_json()

        doc = with_node(state, node, stack, node_small_id, action)

        def render(con: "Console") -> None:
            con.print(f"[bold]commitment of stack {stack}[/] ({doc['num_requests']} requests)")
            con.print(f"  R                           {doc['root']}")
            con.print(f"  committed_stack_proof       {doc['committed_stack_proof']}")
            con.print(f"  stack_merkle_leaf           {doc['stack_merkle_leaf']}")
            con.print(f"  num_claimed_compute_units   {doc['num_claimed_compute_units']}")
            con.print(f"  extra attestation nodes     {doc['cross_validation_extra_nodes_count']}")

        return doc, render

    run(ctx, produce)


@stack_app.command("try-settle")
def stack_try_settle(
    ctx: typer.Context,
    stack: int = typer.Option(..., "--stack", metavar="N"),
    node: Optional[str] = NODE_OPT,
    node_small_id: Optional[int] = NODE_SMALL_ID_PICK_OPT,
) -> None:
    """Stop serving the stack, commit to its history and call try_settle_stack (claimed = metered usage), journaled
    in the ledger like the try-settle flow's (the same stage: ``lifecycle.try_settle_stack``)."""

    def produce(state: State) -> tuple[Any, Render]:
        async def action(service: Any) -> tuple:
            from ..lifecycle import try_settle_stack

            settled = await try_settle_stack(service, _journal(state), stack)
            tx = await service.chain.get_transaction(settled.digest) if settled.status == "success" else None
            return settled, tx, service

        settled, tx, service = with_node(state, node, stack, node_small_id, action)
        doc = {
            **settled.settlement_doc(),
            "already_settled": settled.status == "already_done",
            "transaction": tx.to_json() if tx is not None else None,
        }

        def render(con: "Console") -> None:
            if tx is not None:
                sess = Session(service.chain, state)
                render_tx(tx, "stack try-settle (db::try_settle_stack)", sess)(con)
            else:
                con.print(f"[green]✓[/] stack {stack} was already settled with this commitment")
            con.print(f"  R {doc['root']}; claimed {doc['num_claimed_compute_units']} compute units")
            con.print(f"  attestation nodes requested: {doc['requested_attestation_nodes'] or 'none'}")

        return doc, render

    run(ctx, produce)


def _journal(state: State) -> Any:
    """The intent journal the flows write to: PostgreSQL at ``--journal-url`` (or ``$ATOMA_OPS_JOURNAL_URL``) when
    given, else the ledger of the home (``<home>/ledger.duckdb``)."""
    from ..journal_postgres import open_journal
    from ..ledger.api import Ledger, default_path

    return open_journal(state.journal_url, Ledger(default_path(state.home)))


def _replay_render(doc: dict) -> Render:
    def render(con: "Console") -> None:
        mark = "[green]equal[/]" if doc["equal"] else "[red]DIVERGES[/]"
        con.print(f"replay of stack {doc['stack_small_id']}: {doc['num_requests']} request(s) in {doc['wall_s']} s — {mark}")
        con.print(f"  history root   {doc['history_root']}")
        con.print(f"  replayed root  {doc['replayed_root']}")
        d = doc.get("first_divergence")
        if d:
            con.print(f"  first divergence at request {d['index']} ({doc['num_diverging']} diverging):")
            con.print(f"    stored:   {esc(repr(d['stored_content']))}")
            con.print(f"    replayed: {esc(repr(d['replayed_content']))}")

    return render


@stack_app.command("replay")
def stack_replay(
    ctx: typer.Context,
    stack: int = typer.Option(..., "--stack", metavar="N"),
    history_file: Optional[str] = typer.Option(
        None, "--history", metavar="FILE", help="A history export to replay (default: the node's own history)."
    ),
    node: Optional[str] = NODE_OPT,
    engine: str = ENGINE_OPT,
    openai_base_url: Optional[str] = BASE_URL_OPT,
    model: Optional[str] = MODEL_OPT,
    node_small_id: Optional[int] = NODE_SMALL_ID_PICK_OPT,
) -> None:
    """Re-run a stack's history through the engine; report whether every response and R match (exit 0 either way;
    see "equal")."""

    def produce(state: State) -> tuple[Any, Render]:
        from ..serving.replay import replay

        load = engine_loader(state, engine, openai_base_url, model)
        if history_file is not None:
            from ..serving.history import import_jsonl

            input_text_file("--history", history_file)
            history = import_jsonl(history_file, expect_stack=stack)
            eng = load()
            try:
                report = replay(history, eng)
            finally:
                eng.close()
        else:

            async def action(service: Any) -> Any:
                import asyncio

                history = service.history(stack)
                if not history.entries:
                    from ..serving.metering import NothingToCommit

                    raise NothingToCommit(f"stack {stack} has no served requests on this node: nothing to replay")
                return await asyncio.to_thread(replay, history, service.engine)

            report = with_node(state, node, stack, node_small_id, action, engine=load)
        doc = report.to_json()
        return doc, _replay_render(doc)

    run(ctx, produce)


@stack_app.command("attest")
def stack_attest(
    ctx: typer.Context,
    stack: int = typer.Option(..., "--stack", metavar="N"),
    history_file: Optional[str] = typer.Option(None, "--history", metavar="FILE", help="The serving node's history export."),
    history_url: Optional[str] = typer.Option(
        None, "--history-url", "--node-url", metavar="URL",
        help="Read the history from the serving node's server instead (signed with the attesting node's key).",
    ),
    node: Optional[str] = typer.Option(None, "--node", metavar="ALIAS|0x…", help="The attesting node (default: --address)."),
    engine: str = ENGINE_OPT,
    openai_base_url: Optional[str] = BASE_URL_OPT,
    model: Optional[str] = MODEL_OPT,
    node_small_id: Optional[int] = NODE_SMALL_ID_PICK_OPT,
) -> None:
    """As a requested attestation node: replay the history (an export file, or read from the serving node's server
    over HTTP) and submit the replayed commitment, journaled in the ledger like the attest flow's (the same stage:
    ``lifecycle.attest_stack``)."""

    def produce(state: State) -> tuple[Any, Render]:
        from ..serving.history import import_jsonl
        from .inputs import http_url

        if node is None and state.address is None:
            raise CliInputError("say which node attests with --node ALIAS (or --address)")
        if (history_file is None) == (history_url is None):
            raise CliInputError("give the history as --history FILE or --history-url URL (one of them)")
        url = http_url("--history-url", history_url) if history_url is not None else None
        if history_file is not None:
            input_text_file("--history", history_file)
            history = import_jsonl(history_file, expect_stack=stack)
        load = engine_loader(state, engine, openai_base_url, model)

        async def action(service: Any) -> tuple:
            from ..lifecycle import attest_stack, fetch_history

            # read with the attesting node's own key: the serving node lets a requested attester read the history
            got = history if url is None else await fetch_history(stack, url, service)
            attested = await attest_stack(service, _journal(state), stack, got)
            tx = await service.chain.get_transaction(attested.digest) if attested.status == "success" else None
            return attested, tx, service

        attested, tx, service = with_node(state, node, stack, node_small_id, action, engine=load)
        doc = {
            "stack_small_id": attested.stack_small_id,
            "position": attested.position,
            "replay": attested.replay,
            "history_matches_ticket": attested.history_matches_ticket,
            "committed_stack_proof": attested.committed_stack_proof,
            "stack_merkle_leaf": attested.stack_merkle_leaf,
            "disputed": attested.disputed,
            "attestations_complete": attested.completed,
            "already_attested": attested.status == "already_done",
            "transaction": tx.to_json() if tx is not None else None,
        }

        def render(con: "Console") -> None:
            _replay_render(doc["replay"])(con)
            if tx is not None:
                render_tx(tx, f"attestation at position {doc['position']}", Session(service.chain, state))(con)
            else:
                con.print(f"[green]✓[/] node {service.node_small_id} had already attested stack {stack}")
            if doc["disputed"]:
                con.print("[red]the attestation opened a dispute[/]")
            elif doc["attestations_complete"]:
                con.print("[green]all attestations in: no dispute[/]")

        return doc, render

    run(ctx, produce)




# ------------------------------------------------------------------------------------------------ the buyer's side
@stack_app.command("chat")
def stack_chat(
    ctx: typer.Context,
    prompt: str = typer.Argument(..., metavar="PROMPT", help="The user message."),
    stack: int = typer.Option(..., "--stack", metavar="N", help="Stack small id (yours: you bought it)."),
    url: str = typer.Option(..., "--url", metavar="URL", help="The stack's node, e.g. http://127.0.0.1:8000."),
    model: Optional[str] = typer.Option(None, "--model", metavar="NAME", help="Model name (default: the task's)."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", metavar="N", min=1, help="Output budget."),
    tx_digest: Optional[str] = typer.Option(None, "--tx-digest", metavar="DIGEST",
                                            help="The purchase's digest, for a stack bought moments ago."),
    no_stream: bool = typer.Option(False, "--no-stream", help="One JSON answer instead of a stream."),
) -> None:
    """Ask the stack's node, as the stack's buyer (--address, else the active address): the request is signed with
    your key, the answer streams as it comes and must be signed by the node the stack was sold to (checked on chain)."""
    import sys

    from ..client import buyer

    def produce(state: State) -> tuple[Any, Render]:
        def show(text: str) -> None:
            sys.stdout.write(text)
            sys.stdout.flush()

        doc = buyer.chat(state.home, url, stack, prompt, buyer=state.address, model=model, max_tokens=max_tokens,
                         tx_digest=tx_digest, stream=not no_stream, on_text=None if state.json else show)

        def render(con: "Console") -> None:
            sys.stdout.write("\n")
            console(stderr=True).print(
                f"[green]signed by node {doc['node_small_id']}[/] ({doc['signed_by']}); "
                f"{doc['compute_units'] or (doc['atoma'] or {}).get('compute_units')} compute units"
            )

        return doc, render

    run(ctx, produce)


@stack_app.command("verify-response")
def stack_verify_response(
    ctx: typer.Context,
    file: str = typer.Argument(..., metavar="FILE", help="A saved JSON answer, or a saved stream (its data: lines)."),
    stack: Optional[int] = typer.Option(None, "--stack", metavar="N",
                                        help="Also check the signer holds the NodeBadge of this stack's node."),
    node_address: Optional[str] = typer.Option(None, "--node-address", metavar="0x…", help="The expected signer."),
) -> None:
    """Check a node's signature on a saved answer (response_hash and signature, as the Atoma node signs them)."""
    from ..client import buyer

    def produce(state: State) -> tuple[Any, Render]:
        input_text_file("FILE", file)  # a regular UTF-8 file (a FIFO would block the read)
        doc = buyer.verify_file(file, home=state.home, stack=stack, node_address=node_address)

        def render(con: "Console") -> None:
            where = f" (node {doc['node_small_id']} of stack {stack})" if stack is not None else ""
            con.print(f"[green]verified[/]: the {doc['kind']} is signed by {doc['signed_by']}{where}")

        return doc, render

    run(ctx, produce)
