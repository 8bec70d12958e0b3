"""Workloads: JSONL files of chat requests (one OpenAI ``/v1/chat/completions`` body per line) to run on a stack.

Blank lines and lines starting with ``#`` are skipped. ``data/workloads/sample.jsonl`` is a varied sample (short
questions, system prompts, multi-turn chats, content parts, ``max_completion_tokens``, seeded sampling) with modest
output budgets, so it runs on the CPU engine in well under a minute.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

from ..core.errors import ErrorClass
from .metering import BadRequest, validate_request

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "workloads" / "sample.jsonl"


class WorkloadError(ValueError):
    """A workload file that cannot be served as it is: not UTF-8, a line that is not JSON or not a valid chat
    request, or no request at all. The message names the file and the line. Terminal: reading the same file again
    gives the same answer, so a task or flow never retries it."""

    kind = "InvalidWorkload"
    error_class = ErrorClass.TERMINAL


def load_workload(path: str | os.PathLike) -> list[dict]:
    """The requests of a workload file, each validated.

    Raises:
        WorkloadError: bytes that are not UTF-8, a line that is not JSON or not a valid chat request (the message
            names the file and the line).
        OSError: the file cannot be read.
    """
    requests: list[dict] = []
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start].decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")  # valid up to there
        line, column = before.count("\n") + 1, len(before) - before.rfind("\n")
        raise WorkloadError(f"{path}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x} at column {column})") from None
    # universal newlines, as ``open(path, encoding="utf-8")`` reads a file: \n, \r\n and \r end a line
    for n, raw in enumerate(io.StringIO(text, newline=None), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            request = json.loads(line)
        except json.JSONDecodeError as exc:
            raise WorkloadError(f"{path}:{n}: not JSON ({exc.msg})") from None
        try:
            requests.append(validate_request(request))
        except BadRequest as exc:
            raise WorkloadError(f"{path}:{n}: {exc}") from None
    if not requests:
        raise WorkloadError(f"{path} holds no requests")
    return requests
