"""Parsing and checking command-line values before anything is opened: hex bytes, integer lists, object ids, the
badge a command acts with."""

from __future__ import annotations

import re
from typing import List, Optional

import typer

from ..protocol.constants import U64_MAX
from .errors import CliInputError


# --------------------------------------------------------------------------------------------------- input parsing
_HEX_RE = re.compile(r"^[0-9a-fA-F]*$")


def parse_hex(flag: str, text: str) -> bytes:
    """``0x``-prefixed hex -> bytes (the contract checks lengths, not the CLI)."""
    t = text.strip()
    if not t.startswith(("0x", "0X")) or not _HEX_RE.match(t[2:]) or len(t) % 2:
        raise CliInputError(f"{flag}: {text!r} is not 0x-prefixed hex bytes (e.g. 0x{'ab' * 32})")
    return bytes.fromhex(t[2:])


def parse_ints(flag: str, values: Optional[List[str]]) -> list[int]:
    """Repeated flags and comma lists, in order: ``--x 1 --x 2,3`` -> [1, 2, 3]; empty pieces are dropped."""
    out: list[int] = []
    for value in values or []:
        for piece in value.split(","):
            piece = piece.strip()
            if not piece:
                continue
            try:
                out.append(int(piece))
            except ValueError:
                raise CliInputError(f"{flag}: {piece!r} is not an integer") from None
    return out


def object_id(flag: str, text: Optional[str]) -> Optional[str]:
    """An object id flag: ``0x`` and 1..64 hex digits (None passes: the object is then found among the signer's)."""
    if text is None:
        return None
    t = text.strip()
    if not t.startswith(("0x", "0X")) or not 0 < len(t) - 2 <= 64 or not _HEX_RE.match(t[2:]):
        raise CliInputError(f"{flag}: {text!r} is not an object id (0x and up to 64 hex digits)")
    return t


def node_badge_pick(node_badge: Optional[str], node_small_id: Optional[int]) -> dict:
    if node_badge is not None and node_small_id is not None:
        raise CliInputError("--node-badge and --node-small-id both pick the NodeBadge; give one of them")
    return {"node_badge": object_id("--node-badge", node_badge), "node_small_id": node_small_id}


def task_badge_pick(task_badge: Optional[str], task_small_id: Optional[int]) -> dict:
    if task_badge is not None and task_small_id is not None:
        raise CliInputError("--task-badge and --task-small-id both pick the TaskBadge; give one of them")
    return {"task_badge": object_id("--task-badge", task_badge), "task_small_id": task_small_id}


def kebab(name: str) -> str:
    return name.replace("_", "-")


NODE_BADGE_OPT = typer.Option(None, "--node-badge", metavar="ID", help="NodeBadge object id (default: the signer's only one).")
NODE_SMALL_ID_OPT = typer.Option(None, "--node-small-id", metavar="N", help="Pick the signer's NodeBadge with this node small id.")
MANAGER_BADGE_OPT = typer.Option(None, "--badge", metavar="ID", help="AtomaManagerBadge object id (default: the signer's).")


I64_MAX = 2**63 - 1


def stored_id(flag: str, value: int) -> int:
    """A small id or index this machine looks up in its own stores (node stores, the localnet's event log): a u64
    on Sui, but SQLite holds signed 64-bit integers, and no id past 2^63-1 is ever issued here."""
    if not 0 <= value <= U64_MAX:
        raise CliInputError(f"{flag}: {value} is not a u64 (0..{U64_MAX})")
    if value > I64_MAX:
        raise CliInputError(f"{flag}: no such id here: {value} is past the last one this node's stores hold ({I64_MAX})",
                            kind="NotFound")
    return value


# --------------------------------------------------------------------------------------------------- files and ports
MAX_INPUT_BYTES = 256 * 1024 * 1024  # a workload or history file larger than this is refused before reading


def input_text_file(flag: str, path: str) -> str:
    """The text of a UTF-8 input file, checked before anything is loaded: it exists, is a regular file (not a
    directory, FIFO or device, which could block or never end), is at most MAX_INPUT_BYTES, and decodes as UTF-8."""
    import os
    import stat

    if not path:
        raise CliInputError(f"{flag}: give a file name")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CliInputError(f"{flag}: {path} does not exist", kind="FileNotFound") from None
    except OSError as exc:
        raise CliInputError(f"{flag}: {path} cannot be read ({exc.strerror})", kind="FileUnreadable") from None
    if stat.S_ISDIR(st.st_mode):
        raise CliInputError(f"{flag}: {path} is a directory, not a file", kind="NotAFile")
    if not stat.S_ISREG(st.st_mode):
        raise CliInputError(f"{flag}: {path} is not a regular file (a FIFO, socket or device)", kind="NotAFile")
    if st.st_size > MAX_INPUT_BYTES:
        raise CliInputError(f"{flag}: {path} is {st.st_size} bytes, more than {MAX_INPUT_BYTES}", kind="FileTooLarge")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_INPUT_BYTES + 1)
    except OSError as exc:
        raise CliInputError(f"{flag}: {path} cannot be read ({exc.strerror})", kind="FileUnreadable") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise CliInputError(
            f"{flag}: {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}, line {line})",
            kind="NotUtf8",
        ) from None


def output_file(flag: str, path: str) -> str:
    """A file an export will create: refused when it exists (exports never replace a file), when it names a
    directory, or when a folder on its way is a file."""
    from pathlib import Path

    if not path:
        raise CliInputError(f"{flag}: give a file name")
    p = Path(path)
    if p.is_dir():
        raise CliInputError(f"{flag}: {path} is a directory; give a file name", kind="NotAFile")
    if p.exists() or p.is_symlink():
        raise CliInputError(f"{flag}: {path} already exists; remove it or choose another name", kind="FileExists")
    _parents_are_folders(flag, p)
    return path


def output_dir(flag: str, path: str, names: list[str]) -> str:
    """A folder an export writes ``names`` into: refused when it is a file, or when one of the files exists."""
    from pathlib import Path

    if not path:
        raise CliInputError(f"{flag}: give a folder name")
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise CliInputError(f"{flag}: {path} exists and is not a directory", kind="NotADirectory")
    _parents_are_folders(flag, p)
    for name in names:
        if (p / name).exists() or (p / name).is_symlink():
            raise CliInputError(f"{flag}: {p / name} already exists; remove it or choose another folder", kind="FileExists")
    return path


def _parents_are_folders(flag: str, p: "Path") -> None:  # noqa: F821
    for parent in p.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise CliInputError(f"{flag}: {parent} is not a directory", kind="NotADirectory")
            return


def http_url(flag: str, url: str) -> str:
    """A node server's root URL (``http(s)://HOST[:PORT]``, port 1-65535, no trailing slash or ``/v1``), else the
    named input error (the same check as ``stack serve --url``: ``client.buyer.node_root``)."""
    from ..client.buyer import InvalidNodeUrl, node_root

    try:
        return node_root(url.strip())
    except InvalidNodeUrl as exc:
        raise CliInputError(f"{flag}: {exc}") from None


def tcp_port(flag: str, port: int) -> int:
    if not 1 <= port <= 65535:
        raise CliInputError(f"{flag}: {port} is not a TCP port (1..65535)")
    return port


def port_free(host: str, port: int) -> None:
    """Refuse a port something already listens on (bound and released at once, before the engine loads)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise CliInputError(f"--host: {host!r} is not an address here ({exc})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as exc:
            raise CliInputError(f"cannot listen on {host}:{port}: {exc.strerror}", kind="PortUnavailable") from None
