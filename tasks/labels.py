"""What makes a run legible in the Prefect UI: its name, its tags, its artifact keys, and money as USDC.

An operator scanning the runs list should read what each run acts on (``claim stack-12 node-3``) and filter by it
(tags ``network:…``, ``task:…``, ``node:…``, ``stack:…``); an artifact belongs to one network and one stack or
node, so a run on a second localnet never replaces the demo's card. One :class:`RunLabels` per flow or task says
which of its parameters name what it acts on; the name and the tags are derived from that.
"""

from __future__ import annotations

import functools
import inspect
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from atoma_ops.protocol.money import format_usdc

#: the kinds of thing a run acts on, in the order a name lists them; each tag is ``<kind>:<value>`` (``account``: a
#: buyer, an admin, a USDC recipient)
KINDS = ("network", "task", "stack", "node", "account")
#: a run over more stacks than this is tagged by none of them (the name gives the range)
MAX_STACK_TAGS = 10

_SLUG = re.compile(r"[^a-z0-9]+")


def slug(text: Any) -> str:
    """Lowercase letters, digits and single dashes: what Prefect accepts in an artifact key."""
    return _SLUG.sub("-", str(text).lower()).strip("-")


def network_label(network: Any) -> str:
    """A short name of the network: the localnet's folder (``demo-localnet``), or the Sui preset (``testnet``, or
    ``sui-<db id>`` for a custom deployment). ``network`` is the block, its fields as a dict (a deployment's
    parameters before validation), or None (the default localnet)."""
    fields = network.model_dump() if hasattr(network, "model_dump") else dict(network or {})
    if fields.get("kind", "localnet") == "localnet":
        return slug(Path(fields.get("home") or "data/localnet").resolve().name) or "localnet"
    if fields.get("sui_preset", "testnet") != "custom":
        return slug(fields.get("sui_preset", "testnet"))
    return "sui-" + slug(str(fields.get("db_id") or "custom").removeprefix("0x")[:8])


def _node(value: Any) -> str:
    text = str(value)
    return f"{text[:6]}…{text[-4:]}" if text.startswith("0x") and len(text) > 14 else text


def _stacks(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v[0]) if isinstance(v, (tuple, list)) else int(v) for v in value]  # (stack, units) pairs too


def _stacks_text(ids: list[int]) -> str:
    if len(ids) == 1:
        return f"stack-{ids[0]}"
    if len(ids) <= 3:
        return "stacks-" + ",".join(map(str, ids))
    return f"stacks-{min(ids)}..{max(ids)} ({len(ids)})"


class RunLabels:
    """The name and tags of the runs of one flow or task, from the parameters that say what it acts on.

    ``RunLabels("claim", stack="stack_small_ids", node="node")`` names a run ``claim stack-12 node-3`` and tags it
    ``network:<label>``, ``stack:12``, ``node:node-3``. A kind may name one parameter or a few (the first given
    wins); ``network`` is read from the ``network`` parameter unless told otherwise, and is part of the name only
    when asked for (``network="network"``), which suits the scheduled runs that act on a whole network. ``suffix``
    ends the name, formatted with the parameters (``"lines {start}-{stop}"``).
    """

    def __init__(self, verb: str, suffix: str | None = None, **params: str | tuple[str, ...]):
        unknown = set(params) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown kinds {sorted(unknown)} (one of {KINDS})")
        self.verb = verb
        self.suffix = suffix
        self.params = {k: (v,) if isinstance(v, str) else tuple(v) for k, v in params.items()}
        self.network_in_name = "network" in params
        self.params.setdefault("network", ("network",))

    def facts(self, parameters: Mapping[str, Any]) -> list[tuple[str, Any]]:
        """``[(kind, value), …]`` in :data:`KINDS` order, for the kinds whose parameter has a value."""
        out = []
        for kind in KINDS:
            names = self.params.get(kind, ())
            present = [parameters[n] for n in names if n in parameters]
            value = next((v for v in present if v is not None), None)
            if kind == "network":  # absent: the default localnet
                out.append((kind, network_label(value)))
            elif kind == "stack":
                if _stacks(value):
                    out.append((kind, _stacks(value)))
            elif value is not None and value != []:
                out.append((kind, value))
        return out

    def name_of(self, parameters: Mapping[str, Any]) -> str:
        words = [self.verb]
        for kind, value in self.facts(parameters):
            if kind == "network" and not self.network_in_name:
                continue
            if kind == "stack":
                words.append(_stacks_text(value))
            elif kind == "task":
                words.append(f"task-{value}")
            elif kind == "node" and isinstance(value, (list, tuple)):
                words.append(",".join(_node(v) for v in value))
            else:
                words.append(_node(value))
        if self.suffix:
            try:
                words.append(self.suffix.format(**parameters))
            except (KeyError, IndexError, ValueError):
                pass
        return " ".join(words)

    def tags_of(self, parameters: Mapping[str, Any]) -> list[str]:
        tags = []
        for kind, value in self.facts(parameters):
            if kind == "stack":
                tags += [f"stack:{s}" for s in value] if len(value) <= MAX_STACK_TAGS else []
            elif kind == "node" and isinstance(value, (list, tuple)):
                tags += [f"node:{_node(v)}" for v in value]
            else:
                tags.append(f"{kind}:{_node(value)}")
        return tags

    def name(self, parameters: Mapping[str, Any] | None = None) -> str:
        """``flow_run_name`` / ``task_run_name``: Prefect passes a task's ``parameters``; a flow's are read from the
        run context."""
        if parameters is None:
            from prefect.runtime import flow_run

            parameters = flow_run.parameters
        return self.name_of(parameters)

    def tagged(self, fn: Callable) -> Callable:
        """Decorate a flow function (under ``@flow``): its run gets the tags of what it acts on, and so do the task
        and flow runs it starts (they are created inside ``prefect.tags``)."""
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        async def run(*args: Any, **kwargs: Any) -> Any:
            from prefect import tags

            bound = signature.bind_partial(*args, **kwargs)
            bound.apply_defaults()
            labels = self.tags_of(bound.arguments)
            await add_flow_run_tags(labels)
            with tags(*labels):
                return await fn(*args, **kwargs)

        # Prefect validates a run's parameters against the signature, resolving string annotations (``from
        # __future__ import annotations``) in the wrapper's globals, which are this module's: hand it the flow's
        # own annotations, already resolved, or a deployment's run fails with "`AtomaNetwork` is not defined".
        hints = typing.get_type_hints(fn)
        run.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values()],
            return_annotation=hints.get("return", signature.return_annotation),
        )
        return run


async def add_flow_run_tags(labels: Iterable[str]) -> None:
    """Add ``labels`` to the current flow run's tags (a run's tags are fixed when it is created, before its
    parameters are known to us: a deployment's run carries the deployment's)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return
    current = list(ctx.flow_run.tags or [])
    merged = current + [t for t in labels if t not in current]
    if merged == current:
        return
    updated = ctx.client.update_flow_run(ctx.flow_run.id, tags=merged)
    if inspect.isawaitable(updated):  # the async engine's client
        await updated
    ctx.flow_run.tags = merged


def artifact_key(network: Any, *parts: Any) -> str:
    """``<network>-<part>-…`` as an artifact key: per network, and per stack or node as the parts say
    (``artifact_key(network, "stack", 12, "claim")`` → ``demo-localnet-stack-12-claim``)."""
    return "-".join(p for p in (slug(network_label(network)), *(slug(x) for x in parts)) if p)


def usdc(base_units: int | None) -> str | None:
    """``400000`` → ``0.400000 USDC (400000 base units)``: the amount a reader thinks in, the exact one beside."""
    if base_units is None:
        return None
    return f"{format_usdc(int(base_units))} USDC ({int(base_units)} base units)"


def with_usdc(rows: list[dict], *columns: str) -> list[dict]:
    """Table rows for an artifact: each money column (base units) shown as :func:`usdc`."""
    return [{k: (usdc(v) if k in columns and isinstance(v, int) else v) for k, v in r.items()} for r in rows]
