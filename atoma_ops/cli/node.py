"""``atoma-ops node …``: run a serving node (the OpenAI-compatible HTTP server) and list what it served."""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING, Any, List, Optional

import typer

from .core import Render, State, esc, note, run, sub_app
from .errors import CliInputError
from .inputs import port_free, tcp_port
from .serving import BASE_URL_OPT, ENGINE_OPT, MODEL_OPT, NODE_SMALL_ID_PICK_OPT, engine_loader, with_node

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

node_app = sub_app("Run a serving node: the OpenAI-compatible HTTP server with compute-unit metering and stack history.")


@node_app.command("serve")
def node_serve(
    ctx: typer.Context,
    node: str = typer.Option(..., "--node", metavar="ALIAS|0x…", help="The node's wallet alias or address."),
    engine: str = ENGINE_OPT,
    port: int = typer.Option(8000, "--port", metavar="N"),
    host: str = typer.Option("127.0.0.1", "--host", metavar="ADDR"),
    openai_base_url: Optional[str] = BASE_URL_OPT,
    model: Optional[str] = MODEL_OPT,
    max_pending: int = typer.Option(
        256, "--max-pending", metavar="N",
        help="Requests in progress at once (admitted, not yet recorded); past it the node answers 429 with Retry-After.",
    ),
    node_small_id: Optional[int] = NODE_SMALL_ID_PICK_OPT,
    tokenizer: Optional[str] = typer.Option(
        None, "--tokenizer", metavar="auto|remote|PATH",
        help="With --engine openai, how the node counts tokens at admission. auto (default): with the model's own "
             "tokenizer from the local HuggingFace cache when it is there (vllm serve on this host put it there), "
             "else by asking the server's /tokenize (twice per request); remote: always /tokenize; PATH: the served "
             "model's tokenizer (a transformers folder or a GGUF file).",
    ),
    task_model: Optional[List[str]] = typer.Option(
        None, "--task-model", metavar="NAME",
        help="With --engine openai, a task's model name (HuggingFace's) that the served model is, when vllm serve "
             "serves it under another name (--served-model-name); repeatable. The node serves a stack only if its "
             "task's model is --model or one of these (else 400, nothing charged).",
    ),
) -> None:
    """Serve OpenAI-compatible chat completions for the node's stacks (header X-Stack-Small-Id) until Ctrl-C."""

    def produce(state: State) -> tuple[Any, Render]:
        if max_pending < 1:
            raise CliInputError("--max-pending must be >= 1")
        tcp_port("--port", port)
        if not host.strip():
            raise CliInputError("--host: give an address to listen on (e.g. 127.0.0.1)")
        load = engine_loader(state, engine, openai_base_url, model, tokenizer, task_model or ())
        port_free(host, port)  # before the engine loads (tens of seconds); checked again when uvicorn binds

        async def action(service: Any) -> dict:
            import uvicorn

            from ..serving.server import create_app

            note(
                state,
                f"node {service.node_small_id} ({service.alias}) serving on http://{host}:{port} with the "
                f"{engine} engine ({getattr(service.engine, 'model', '?')}), at most {service.max_pending} requests in "
                f"progress; store {service.store.path}",
            )
            config = uvicorn.Config(create_app(service), host=host, port=port, log_level="info")
            server = uvicorn.Server(config)
            # what is loaded now (the engine, the tokenizer, the libraries) lives as long as the server: out of the
            # garbage collector's reach, whose full passes over it otherwise cost every request (measured: ~10%)
            gc.collect()
            gc.freeze()
            try:
                await server.serve()
            except SystemExit:  # uvicorn exits when it cannot bind (the port was taken after the check above)
                raise CliInputError(f"cannot listen on {host}:{port}", kind="PortUnavailable") from None
            if not server.started:
                raise OSError(f"could not listen on {host}:{port}")
            return {"node_small_id": service.node_small_id, "host": host, "port": port, "stopped": True}

        doc = with_node(state, node, None, node_small_id, action, engine=load, max_pending=max_pending, fast_loop=True)
        return doc, lambda con: con.print("server stopped")

    run(ctx, produce)


@node_app.command("stacks")
def node_stacks(
    ctx: typer.Context,
    node: str = typer.Option(..., "--node", metavar="ALIAS|0x…", help="The node's wallet alias or address."),
    node_small_id: Optional[int] = NODE_SMALL_ID_PICK_OPT,
) -> None:
    """The stacks this node has served: units used, reserved and left, requests, settlement state."""

    def produce(state: State) -> tuple[Any, Render]:
        async def action(service: Any) -> dict:
            return {
                "node_small_id": service.node_small_id,
                "store": str(service.store.path),
                "stacks": [u.to_json() for u in service.store.stacks()],
            }

        doc = with_node(state, node, None, node_small_id, action)

        def render(con: "Console") -> None:
            con.print(f"[bold]node {doc['node_small_id']}[/]: {len(doc['stacks'])} stack(s) served ({esc(doc['store'])})")
            for u in doc["stacks"]:
                con.print(
                    f"  stack {u['stack_small_id']}: {u['used_units']} used, {u['units_left']} left of "
                    f"{u['num_compute_units']}; {u['num_requests']} requests; {u['state']}"
                )

        return doc, render

    run(ctx, produce)

