"""One interface for every inference engine: a batch of OpenAI-style chat requests in, responses with usage out."""

from __future__ import annotations

import time
import uuid
from abc import ABC, abstractmethod
from typing import Sequence

SMOLLM2_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


class EngineError(Exception):
    """The engine could not serve a request (bad request for this model, server down, out of context)."""


class Engine(ABC):
    """An inference engine. ``chat`` keeps the order of the batch; responses carry ``usage``."""

    kind: str = "engine"
    model: str

    @abstractmethod
    def chat(self, requests: Sequence[dict]) -> list[dict]:
        """Run a batch of chat requests (OpenAI ``/v1/chat/completions`` bodies).

        Returns:
            One OpenAI ``chat.completion`` dict per request, in order, each with ``usage.prompt_tokens`` and
            ``usage.completion_tokens``.

        Raises:
            EngineError: the batch could not be served; nothing of it was.
        """

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens of a text under the model's tokenizer (no special tokens): the Atoma estimate's unit."""

    def prompt_tokens(self, request: dict) -> int | None:
        """Tokens of the prompt after the chat template, when the engine can tell before running (None if not)."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def completion(model: str, content: str, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> dict:
    """An OpenAI ``chat.completion`` body."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
