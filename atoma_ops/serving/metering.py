"""Compute-unit metering of chat requests (atoma-protocol.md §9) and the serving errors a node answers with.

The Atoma node reserves ``Σ (content tokens + 3) + output budget`` before running and settles to
``usage.prompt_tokens + usage.completion_tokens`` after. That estimate counts only the *content* of the messages,
but the prompt the model really reads is the chat template's rendering: SmolLM2's template adds a default system
prompt ("You are a helpful AI assistant named SmolLM, trained by Hugging Face") and ~5 tokens of markup per message,
so a one-word question is ~30 prompt tokens while the Atoma estimate counts 4. Settling to the actual usage would
then charge more than was reserved, and on a nearly spent stack more than the stack holds.

The reservation here is therefore

    reserved = max(Atoma estimate, templated prompt tokens + output budget)

where the templated prompt length comes from the engine (``Engine.prompt_tokens``: the CPU engine applies the
model's own chat template, so its usage.prompt_tokens is exactly that number). An engine that cannot tell
(``prompt_tokens`` returns None, e.g. a remote OpenAI server) gets a fixed margin instead:
``Atoma estimate + TEMPLATE_MARGIN + TEMPLATE_MARGIN_PER_MESSAGE × messages``. The output budget bounds the
completion tokens (every engine honours ``max_tokens``), so for an engine that reports its templated length the
settled usage can never exceed the reservation. For the margin case the store still caps what it charges at the
reservation plus the stack's free units (never past the stack's units) and records the overrun.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..protocol.compute_units import chat_estimate, max_output_tokens
from .engines.base import Engine, EngineError

#: fixed allowance for chat-template tokens when the engine cannot count the templated prompt
TEMPLATE_MARGIN = 64
#: per-message allowance for chat-template markup (role header, separators) beyond the Atoma estimate's 3
TEMPLATE_MARGIN_PER_MESSAGE = 8


# --------------------------------------------------------------------------------------------------- errors
class ServingError(Exception):
    """A request the node refuses or cannot serve. ``status`` is the HTTP status, ``type`` the error type in the
    JSON body ``{"error": {"type": …, "message": …}}``; nothing is charged when one is raised."""

    status = 400
    type = "invalid_request_error"

    def __init__(self, message: str, **fields: Any):
        super().__init__(message)
        self.fields = fields

    @property
    def kind(self) -> str:  # the CLI's error "kind"
        return type(self).__name__

    def to_json(self) -> dict:
        return {"type": self.type, "message": str(self), **self.fields}


class BadRequest(ServingError):
    status, type = 400, "invalid_request_error"


class MissingStack(ServingError):
    status, type = 400, "missing_stack"


class StackNotFound(ServingError):
    status, type = 404, "stack_not_found"


class StackNotServedHere(ServingError):
    status, type = 403, "stack_not_served_by_this_node"


class StackSettling(ServingError):
    status, type = 409, "stack_in_settlement"


class StackClaimed(ServingError):
    status, type = 410, "stack_claimed"


class InsufficientUnits(ServingError):
    status, type = 402, "insufficient_compute_units"


class StackBusy(ServingError):
    """try-settle while requests are in flight on the stack."""

    status, type = 409, "stack_busy"


class NothingToCommit(ServingError):
    status, type = 409, "empty_history"


class NotAttester(ServingError):
    status, type = 403, "not_selected_for_attestation"


class EngineFailure(ServingError):
    status, type = 502, "engine_error"


# --------------------------------------------------------------------------------------------------- requests
def validate_request(request: Any) -> dict:
    """Check the parts of an OpenAI chat request that metering and the engines rely on.

    Raises:
        BadRequest: not an object, no messages, a non-positive or non-integer output budget, streaming, n != 1.
    """
    if not isinstance(request, dict):
        raise BadRequest("the request body must be a JSON object")
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"messages[{i}] must be an object with a string 'role'")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise BadRequest(f"messages[{i}].content must be a string or a list of parts")
    for key in ("max_completion_tokens", "max_tokens"):
        value = request.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise BadRequest(f"'{key}' must be a positive integer, got {value!r}")
    if request.get("stream"):
        raise BadRequest("streaming is not supported by this node ('stream' must be false)")
    n = request.get("n")
    if n is not None and n != 1:
        raise BadRequest("only n = 1 is supported")
    return request


@dataclass(frozen=True)
class Estimate:
    """What a request reserves: ``reserved = max(atoma, bound)``."""

    atoma: int  # §9: Σ (content tokens + 3) + output budget
    output_budget: int  # max_completion_tokens | max_tokens | 8192
    templated_prompt: int | None  # prompt tokens after the chat template (None: the engine cannot tell)
    bound: int  # templated prompt + output budget, or the Atoma estimate + margin
    reserved: int
    method: str  # "templated" | "margin"

    def to_json(self) -> dict:
        return {
            "atoma_estimate": self.atoma,
            "output_budget": self.output_budget,
            "templated_prompt_tokens": self.templated_prompt,
            "bound": self.bound,
            "reserved": self.reserved,
            "method": self.method,
        }


def estimate(request: dict, engine: Engine) -> Estimate:
    """The reservation for one (validated) chat request on ``engine``.

    Raises:
        BadRequest: the engine cannot render the request (its chat template rejects the messages).
    """
    try:
        atoma = chat_estimate(request, engine.count_tokens)
        budget = max_output_tokens(request)
        templated = engine.prompt_tokens(request)
    except EngineError as exc:
        raise BadRequest(str(exc)) from None
    except (TypeError, AttributeError, ValueError) as exc:
        raise BadRequest(f"malformed messages: {exc}") from None
    if templated is None:
        bound = atoma + TEMPLATE_MARGIN + TEMPLATE_MARGIN_PER_MESSAGE * len(request["messages"])
        method = "margin"
    else:
        bound = int(templated) + budget
        method = "templated"
    return Estimate(atoma, budget, templated, bound, max(atoma, bound), method)
