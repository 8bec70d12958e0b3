"""What every command group shares: the options state, the group class that accepts global options anywhere and
owns the one error path (``errors.py``), and printing a command's result.

Global options are declared once, on a group's callback (the root's: ``--address``, ``--home``, ``--json``,
``--debug``; the ledger group's: ``--ledger``, ``--lock-timeout``). ``CliGroup`` copies them onto every command
below that group, so ``atoma-ops --json db get-task …`` and ``atoma-ops db get-task … --json`` mean the same; click
parses the copies in place (a value such as ``--model-name --json`` stays a value). The copies only write into the
root's ``State``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

import typer
from typer.core import TyperGroup

from . import errors

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

Render = Callable[["Console"], None]

HELP_OPTIONS = ["-h", "--help"]
CONTEXT = {"help_option_names": HELP_OPTIONS}
GLOBAL_PANEL = "Global options (before or after the subcommand)"


@dataclass
class State:
    """The global options of one invocation, wherever on the command line they were given."""

    address: Optional[str] = None
    home: Optional[str] = None
    json: bool = False
    debug: bool = False
    ledger: Optional[str] = None
    lock_timeout: float = 30.0
    network: str = "localnet"
    client_yaml: Optional[str] = None
    sui_endpoint: Optional[str] = None
    package_id: Optional[str] = None
    db_id: Optional[str] = None
    usdc_coin_type: Optional[str] = None
    journal_url: Optional[str] = None


# option string -> State attribute (the parameter names differ: ``json_output`` for ``--json``)
_ATTRIBUTES = {
    "--address": "address", "--home": "home", "--json": "json", "--debug": "debug",
    "--ledger": "ledger", "--lock-timeout": "lock_timeout", "--network": "network", "--client-yaml": "client_yaml",
}


def state(ctx: typer.Context) -> State:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, State) else State()


def remember(ctx: typer.Context, **given: Any) -> None:
    """Write options given on the command line into the root's state (any object with those attributes)."""
    root = ctx.find_root()
    if root.obj is None:
        root.obj = State()
    for name, value in given.items():
        setattr(root.obj, name, value)


_PLACES = ("home", "ledger", "client_yaml")  # an empty one would silently mean the current directory


def not_empty_place(param: Any, value: Any) -> None:
    if isinstance(value, str) and not value.strip() and param.name in _PLACES:
        raise typer.BadParameter("empty (it would mean the current directory; give it as ./ if that is meant)",
                                 param=param)


def _store(ctx: Any, param: Any, value: Any) -> Any:
    """Callback of a copied global option: record it in the root state when the user gave it."""
    not_empty_place(param, value)
    source = ctx.get_parameter_source(param.name)
    if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
        attribute = next((_ATTRIBUTES[o] for o in param.opts if o in _ATTRIBUTES), param.name)
        remember(ctx, **{attribute: value})
    return value


def _names(command: Any) -> set[str]:
    return {o for p in command.params for o in (*p.opts, *p.secondary_opts)}


def _flags_as_flags(command: Any) -> None:
    """typer 0.29 shows a flag as ``--json <bool>``; a flag takes no value, so show none (help option included).
    Text values must be UTF-8 (``_utf8_only``)."""
    from typer._click.decorators import help_option

    for p in command.params:
        if getattr(p, "is_flag", False):
            p.metavar = ""
        elif p.name != "help":
            _utf8_only(p)
    if getattr(command, "add_help_option", False) and getattr(command, "_help_option", True) is None:
        help_option(HELP_OPTIONS)(command)
        command._help_option = command.params.pop()
        command._help_option.metavar = ""


# parameters that name files or folders: any bytes the OS allows (a non-UTF-8 name is a valid Linux path)
_PATH_PARAMS = {"home", "workload", "history_file", "export", "ledger", "parquet", "duckdb_file", "out", "client_yaml"}


def _utf8_only(param: Any) -> None:
    """Refuse, as a usage error naming the option, a text value that is not UTF-8 (the shell passes such bytes
    through as lone surrogates, which no store, JSON document or chain call can hold)."""
    if param.name in _PATH_PARAMS or getattr(param, "_utf8_checked", False):
        return
    original = param.callback

    def check(ctx: Any, p: Any, value: Any) -> Any:
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, str):
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:
                    raise typer.BadParameter("not UTF-8 text", ctx=ctx, param=p) from None
        return original(ctx, p, value) if original is not None else value

    param.callback = check
    param._utf8_checked = True


def _inject(group: Any, inherited: list) -> None:
    """Copy ``inherited`` (and this group's own options) onto every command below ``group``."""
    own = [p for p in group.params if any(o in _ATTRIBUTES for o in p.opts)]
    passed = [*inherited, *own]
    for command in group.commands.values():
        if (command.context_settings or {}).get("ignore_unknown_options"):
            continue  # a pass-through to another program's command line: its options are its own
        taken = _names(command)
        for original in passed:
            if taken & set(original.opts):
                continue
            option = copy.copy(original)
            option.expose_value = False
            option.callback = _store
            option._utf8_checked = False
            option.rich_help_panel = GLOBAL_PANEL
            option.required = False
            command.params.append(option)
            taken |= set(option.opts)
        _flags_as_flags(command)
        if hasattr(command, "commands"):
            _inject(command, passed)


class CliGroup(TyperGroup):
    """A group that is its tree's root: global options accepted anywhere, and the one error path."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        _flags_as_flags(self)
        _inject(self, [])

    def invoke(self, ctx: Any) -> Any:
        if ctx.parent is not None:  # mounted under another CliGroup: the root handles errors
            return super().invoke(ctx)
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort):
            raise
        except BaseException as exc:
            if _is_click_exception(exc) or isinstance(exc, (SystemExit, GeneratorExit)):
                raise
            obj = ctx.obj
            status = errors.report(
                exc, json_mode=bool(getattr(obj, "json", False)), debug=bool(getattr(obj, "debug", False))
            )
            raise typer.Exit(status) from None


def _is_click_exception(exc: BaseException) -> bool:
    return any(c.__name__ == "ClickException" for c in type(exc).__mro__)


def console(stderr: bool = False) -> "Console":
    from rich.console import Console

    return Console(stderr=stderr, soft_wrap=True, highlight=False)


def esc(value: Any) -> str:
    from rich.markup import escape

    return escape(str(value))


def emit_json(doc: Any) -> None:
    typer.echo(json.dumps(doc, indent=2))


def note(st: State, text: str) -> None:
    """Progress for people (stderr, never in --json mode)."""
    if not st.json:
        console(stderr=True).print(f"[dim]{esc(text)}[/]")


def run(ctx: typer.Context, produce: Callable[[State], tuple[Any, Render]]) -> None:
    """Run ``produce`` (returns the JSON document and a human renderer) and print it; errors go up to CliGroup."""
    st = state(ctx)
    doc, render = produce(st)
    if st.json:
        emit_json(doc)
    else:
        render(console())


def sub_app(help: str, **kwargs: Any) -> typer.Typer:
    """A command group (mounted by root.py)."""
    return typer.Typer(help=help, no_args_is_help=True, context_settings=CONTEXT, **kwargs)
