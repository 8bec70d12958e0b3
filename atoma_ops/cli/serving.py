"""What the node and stack groups share: opening a node's service over the localnet home, loading an engine after
the cheap checks, and their common options."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Optional, Sequence

import typer

from .core import State, note
from .errors import CliInputError
from .inputs import stored_id

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

    from ..chain.localnet.adapter import LocalnetChain


NODE_OPT = typer.Option(
    None, "--node", metavar="ALIAS|0x…", help="The serving node (default: --address, else the stack's selected node)."
)
NODE_SMALL_ID_PICK_OPT = typer.Option(None, "--node-small-id", metavar="N", help="Pick among several NodeBadges.")
ENGINE_OPT = typer.Option("cpu", "--engine", metavar="cpu|openai|vllm", help="Inference engine (cpu: SmolLM2 on CPU).")
BASE_URL_OPT = typer.Option(None, "--openai-base-url", metavar="URL", help="OpenAI-compatible server (--engine openai).")
MODEL_OPT = typer.Option(None, "--model", metavar="NAME", help="Model name for the engine (default SmolLM2-135M-Instruct).")


async def _node_for_stack(chain: "LocalnetChain", stack_small_id: Optional[int]) -> str:
    """The wallet alias owning the NodeBadge the stack was sold to."""
    if stack_small_id is None:
        raise CliInputError("say which node with --node ALIAS (or --address)")
    from ..chain.errors import NotFound

    stack = await chain.get_stack(stack_small_id)
    if stack is None:
        raise NotFound(f"stack {stack_small_id} not found (stacks claimed with claim-funds are deleted); give --node")
    for alias, address in chain.wallet.aliases().items():
        if any(b.kind == "NodeBadge" and b.small_id == stack.selected_node_id for b in await chain.badges(address)):
            return alias
    raise CliInputError(f"stack {stack_small_id} was sold to node {stack.selected_node_id}, which no wallet alias holds; give --node")


def with_node(
    state: State,
    node: Optional[str],
    stack_small_id: Optional[int],
    node_small_id: Optional[int],
    action: Callable[[Any], Awaitable[Any]],
    engine: Optional[Callable[[], Any]] = None,
    precheck: bool = False,
    max_pending: Optional[int] = None,
    fast_loop: bool = False,
) -> Any:
    """Open the localnet home and the node's service (its store under <home>/nodes/<alias>/), load the engine if
    asked (after the cheap checks; ``precheck``: the stack must be servable by this node), run ``action(service)``,
    close everything. ``max_pending``: the requests the service takes in progress at once (past it: 429)."""
    import asyncio

    from ..home import resolve_home
    from ..serving.node import NodeService
    from .session import open_chain

    if stack_small_id is not None:
        stored_id("--stack", stack_small_id)

    async def main() -> Any:
        home = resolve_home(state.home)
        chain = await open_chain(state)
        service = None
        created = _NewStores(home)
        failed = True
        try:
            who = node or state.address or await _node_for_stack(chain, stack_small_id)
            options = {} if max_pending is None else {"max_pending": max_pending}
            service = await NodeService.open(home, who, None, node_small_id=node_small_id, chain=chain, **options)
            if precheck and stack_small_id is not None:
                await service.check_stack(stack_small_id)
            if engine is not None:
                service.engine = await asyncio.to_thread(engine)
            result = await action(service)
            failed = False
            return result
        finally:
            if service is not None:
                await service.close()
            if service is not None and service.engine is not None:
                service.engine.close()
            await chain.close()
            if failed:
                created.remove()

    if fast_loop:  # the HTTP server: uvloop (what uvicorn picks for itself), the relay of every token is cheaper
        try:
            import uvloop
        except ImportError:
            pass
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(main())
    return asyncio.run(main())


class _NewStores:
    """The node stores a command creates (opening a node's service creates its store): a command that fails
    removes the ones it created, so a refusal leaves the home as it was."""

    def __init__(self, home: Any):
        from pathlib import Path

        from ..home import NODES_DIR

        self.root = Path(home) / NODES_DIR
        self.had_root = self.root.exists()
        self.before = set(self.root.iterdir()) if self.had_root else set()

    def remove(self) -> None:
        import shutil

        if not self.root.exists():
            return
        if not self.had_root:
            shutil.rmtree(self.root, ignore_errors=True)
            return
        for entry in set(self.root.iterdir()) - self.before:
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)


def engine_loader(state: State, kind: str, base_url: Optional[str], model: Optional[str],
                  tokenizer: Optional[str] = None, task_models: Sequence[str] = ()) -> Callable[[], Any]:
    """A loader for the engine ``kind``; ``tokenizer`` (``openai`` only): ``auto``/None, ``remote`` or a path, as
    :func:`atoma_ops.serving.node.load_engine` takes it; ``task_models`` (``openai`` only): the task model names
    the served model is, beyond ``model``."""
    from ..serving.node import ENGINE_KINDS, TOKENIZER_AUTO, TOKENIZER_REMOTE

    if kind not in ENGINE_KINDS:
        raise CliInputError(f"--engine: {kind!r} is not one of {', '.join(ENGINE_KINDS)}")
    if tokenizer not in (None, TOKENIZER_AUTO) and kind != "openai":
        raise CliInputError("--tokenizer is for --engine openai (the cpu engine has its model's own)")
    if task_models and kind != "openai":
        raise CliInputError(f"--task-model is for --engine openai (the {kind} engine serves the task model it runs)")
    if any(not name.strip() for name in task_models):
        raise CliInputError("--task-model: give a model name (e.g. HuggingFaceTB/SmolLM2-135M-Instruct)")
    if tokenizer not in (None, TOKENIZER_AUTO, TOKENIZER_REMOTE):
        path = Path(tokenizer)
        if not tokenizer.strip() or not (path.is_dir() or path.is_file()):
            raise CliInputError(f"--tokenizer: {tokenizer!r} is neither a tokenizer folder nor a GGUF file "
                                f"(nor {TOKENIZER_AUTO} or {TOKENIZER_REMOTE})", kind="FileNotFound")

    def load() -> Any:
        from ..serving.node import load_engine

        note(state, f"loading the {kind} engine…")
        extra = {"task_models": tuple(task_models)} if task_models else {}
        engine = load_engine(kind, model=model, base_url=base_url, tokenizer=tokenizer, **extra)
        if kind == "openai" and tokenizer in (None, TOKENIZER_AUTO):
            found = getattr(engine, "tokenizer_path", None)
            note(state, f"counting tokens with the model's tokenizer from the local HuggingFace cache ({found})"
                 if found is not None else "counting tokens with the server's /tokenize (the model's tokenizer is "
                 "not in the local HuggingFace cache; --tokenizer PATH names it)")
        return engine

    return load


def usage_lines(con: "Console", u: dict) -> None:
    con.print(
        f"  units          {u['used_units']} used, {u['reserved_units']} reserved, {u['units_left']} left "
        f"of {u['num_compute_units']}"
    )
    con.print(f"  requests       {u['num_requests']} served, {u['in_flight']} in flight; state {u['state']}")

