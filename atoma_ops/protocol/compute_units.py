"""Compute units of a chat request, as the Atoma node meters them (atoma-protocol.md §9)."""

from __future__ import annotations

from typing import Callable

DEFAULT_MAX_TOKENS = 8192
TOKENS_PER_MESSAGE = 3


def max_output_tokens(request: dict) -> int:
    """``max_completion_tokens``, else ``max_tokens``, else 8192."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = request.get(key)
        if value is not None:
            return int(value)
    return DEFAULT_MAX_TOKENS


def message_texts(message: dict) -> list[str]:
    """The text parts of a message (string content, or the ``text`` parts of a content list; images count 0)."""
    content = message.get("content")
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    return [part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"]


def chat_estimate(request: dict, count_tokens: Callable[[str], int]) -> int:
    """Σ over text messages/parts (tokens + 3) + the output budget: what the node reserves before running."""
    total = 0
    for message in request.get("messages", []):
        for text in message_texts(message):
            total += count_tokens(text) + TOKENS_PER_MESSAGE
    return total + max_output_tokens(request)


def actual_units(usage: dict) -> int:
    """What a served request costs: ``prompt_tokens + completion_tokens``."""
    return int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0)
