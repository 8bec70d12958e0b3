"""Workloads: JSONL files of chat requests (one OpenAI ``/v1/chat/completions`` body per line) to run on a stack.

Blank lines and lines starting with ``#`` are skipped. ``data/workloads/sample.jsonl`` is a varied sample (short
questions, system prompts, multi-turn chats, content parts, ``max_completion_tokens``, seeded sampling) with modest
output budgets, so it runs on the CPU engine in well under a minute.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .metering import BadRequest, validate_request

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "workloads" / "sample.jsonl"


class WorkloadError(ValueError):
    kind = "InvalidWorkload"


def load_workload(path: str | os.PathLike) -> list[dict]:
    """The requests of a workload file, each validated.

    Raises:
        WorkloadError: a line that is not JSON or not a valid chat request (the message names the line).
        OSError: the file cannot be read.
    """
    requests: list[dict] = []
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, start=1):
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
