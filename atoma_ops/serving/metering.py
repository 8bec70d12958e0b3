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

import asyncio
import math
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..core.errors import ErrorClass
from ..protocol.compute_units import chat_estimate, max_output_tokens, message_texts
from .engines.base import Engine, EngineError, Sampling

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

    @property
    def final(self) -> bool:
        """Sending the same request again cannot succeed (every 4xx but 429 and 499): clients should not retry."""
        return 400 <= self.status < 500 and self.status not in (429, 499)

    def to_json(self) -> dict:
        return {"type": self.type, "message": str(self), **self.fields}


class BadRequest(ServingError):
    status, type = 400, "invalid_request_error"


class MissingStack(ServingError):
    status, type = 400, "missing_stack"


class MissingSignature(ServingError):
    """No ``X-Signature``, or one that cannot be read (bad base64, an unsupported scheme flag, a wrong length, a
    public key off its curve): the Atoma node's 400."""

    status, type = 400, "invalid_signature_header"


class BadSignature(ServingError):
    """A readable ``X-Signature`` that does not verify over the body's hash: the Atoma node's 401."""

    status, type = 401, "invalid_signature"


class PurchaseNotOwned(ServingError):
    """``X-Tx-Digest`` names a transaction that bought no such stack for the signer (the Atoma node's 401,
    "not enough compute units found for transaction")."""

    status, type = 401, "purchase_not_found"


class StackNotFound(ServingError):
    """No stack with that id for the signer on this node (none at all, another owner's): the Atoma node's 400
    ("DoesNotExist"), with no ``X-Tx-Digest`` to look a purchase up."""

    status, type = 400, "stack_not_found"


class StackNotServedHere(ServingError):
    """A stack sold to another node: the Atoma node knows only its own stacks (400, "DoesNotExist")."""

    status, type = 400, "stack_not_served_by_this_node"


class StackSettling(ServingError):
    """The Atoma node's 423 Locked ("please buy a new stack"): in its settle period."""

    status, type = 423, "stack_in_settlement"


class StackClaimed(ServingError):
    """423 Locked: claimed (or gone from the chain after a claim)."""

    status, type = 423, "stack_claimed"


class InsufficientUnits(ServingError):
    """The Atoma node's 425 Too Early ("Unavailable"): the owner's open stack has fewer units left than the
    estimate; buy a new stack, or wait for requests in flight to give their reservations back."""

    status, type = 425, "insufficient_compute_units"

    @property
    def final(self) -> bool:
        """Not final while requests in flight hold reservations on the stack: when they end, it may fit."""
        return not self.fields.get("reserved_in_flight")


class PurchaseNotVisible(ServingError):
    """425 Too Early: ``X-Tx-Digest`` names a purchase this node cannot see yet (send the request again shortly)."""

    status, type = 425, "purchase_not_visible"

    @property
    def final(self) -> bool:
        return False


class StackBusy(ServingError):
    """try-settle while requests are in flight on the stack (try again when they are done)."""

    status, type = 425, "stack_busy"
    error_class = ErrorClass.RETRYABLE  # settle once the requests in flight are done

    @property
    def final(self) -> bool:
        return False


class NothingToCommit(ServingError):
    status, type = 400, "empty_history"


class NotAttester(ServingError):
    status, type = 400, "not_selected_for_attestation"


class EngineFailure(ServingError):
    """The inference engine failed: the Atoma node's 500 (nothing charged)."""

    status, type = 500, "engine_error"


class EngineRefused(ServingError):
    """The server behind the engine refused the request as invalid (its 400, 413 or 422: e.g. a prompt its model
    cannot take): the request's fault, so a 400 that clients do not retry, not the node's 500 (nothing charged)."""

    status, type = 400, "invalid_request_error"


#: statuses of a server behind the engine that mean the request itself is wrong (EngineRefused); not its 404: the
#: engine names the model and the path, so a 404 is the node's configuration, a 500
REQUEST_FAULT_STATUSES = frozenset({400, 413, 422})


class Overloaded(ServingError):
    """The node has as many requests in progress as it takes (``max_pending``): retry after ``retry_after_s``."""

    status, type = 429, "overloaded"


def _refusal_statuses() -> dict[str, int]:
    found: dict[str, int] = {}
    todo = [ServingError]
    while todo:
        cls = todo.pop()
        found.setdefault(cls.type, cls.status)
        todo.extend(cls.__subclasses__())
    return found


class RecordedRefusal(ServingError):
    """A request id this stack finally refused before, sent again: the recorded refusal (its type and message, the
    status of that type) once more, so a re-sent workload line stays refused instead of being judged anew; the
    answer says it is a replay (``Idempotent-Replayed: true``)."""

    def __init__(self, type_: str, message: str, **fields: Any):
        super().__init__(message, **fields)
        self.type = type_
        self.status = _refusal_statuses().get(type_, 400)

    @property
    def final(self) -> bool:
        return True


# --------------------------------------------------------------------------------------------------- requests
#: parameters this node honours (``user`` is recorded with the request, as OpenAI does, and changes nothing)
HONOURED = frozenset({
    "messages", "model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop", "n",
    "stream", "stream_options", "user",
})
#: parameters accepted only at their neutral value (what OpenAI does when they are left out)
NEUTRAL = {
    "frequency_penalty": (0, 0.0),
    "presence_penalty": (0, 0.0),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "logit_bias": ({},),
    "tool_choice": ("none",),
    "parallel_tool_calls": (True, False),
    "store": (False,),
}
#: response formats the node serves (plain text); json_object / json_schema would need constrained decoding
TEXT_FORMAT = {"type": "text"}
MAX_STOP_SEQUENCES = 4
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
U32_MAX = 2**32 - 1


def _number(request: dict, key: str, low: float, high: float, *, low_open: bool = False) -> float | None:
    value = request.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"'{key}' must be a finite number, got {value!r}", param=key)
    if value < low or value > high or (low_open and value == low):
        span = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
        raise BadRequest(f"'{key}' must be in {span}, got {value!r}", param=key)
    return float(value)


#: the roles a chat message may have here (OpenAI's, but ``tool``/``function``: this node has no tool calling)
ROLES = frozenset({"system", "developer", "user", "assistant"})
#: fields a message may carry: OpenAI's; the tool-calling ones only as null or empty (what the SDK echoes back when a
#: client appends an answer's message to its conversation), ``refusal``/``annotations`` are output-only and unused.
#: Any other field is refused unless null (an answer's ``model_dump()`` has ``parsed``, vLLM's ``reasoning_content``)
MESSAGE_FIELDS = frozenset({"role", "content", "name", "refusal", "annotations"})
TOOL_MESSAGE_FIELDS = frozenset({"tool_calls", "tool_call_id", "function_call", "audio"})
#: below this temperature sampling is greedy, as in vLLM (``_SAMPLING_EPS``): dividing logits by a smaller one
#: overflows float32
GREEDY_BELOW_TEMPERATURE = 1e-5


def _validate_message(i: int, message: Any, content_parts: frozenset[str] | None) -> None:
    """One message of ``messages``: an OpenAI role, content as a string or a list of parts the engine reads
    (``content_parts``; None: any typed part, for an engine that relays them to a server that decides)."""
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise BadRequest(f"messages[{i}] must be an object with a string 'role'", param="messages")
    role = message["role"]
    if role not in ROLES:
        why = " (this node has no tool calling)" if role in ("tool", "function") else ""
        raise BadRequest(f"messages[{i}].role {role!r} is not one of {', '.join(sorted(ROLES))}{why}",
                         param="messages")
    for key, value in message.items():
        if key in TOOL_MESSAGE_FIELDS:
            if value not in (None, [], ""):
                raise BadRequest(f"messages[{i}].{key} is not supported by this node (no tool calling)",
                                 param="messages")
        elif key not in MESSAGE_FIELDS and value is not None:
            raise BadRequest(f"messages[{i}] has an unknown field {key!r}", param="messages")
    name = message.get("name")
    if name is not None and not isinstance(name, str):
        raise BadRequest(f"messages[{i}].name must be a string", param="messages")
    content = message.get("content")
    if content is None:
        if role != "assistant":
            raise BadRequest(f"messages[{i}] ({role}) needs a 'content'", param="messages")
        return
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise BadRequest(f"messages[{i}].content must be a string or a list of parts", param="messages")
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str):
            raise BadRequest(f"messages[{i}].content[{j}] must be an object with a string 'type'", param="messages")
        if kind == "text" and not isinstance(part.get("text"), str):
            raise BadRequest(f"messages[{i}].content[{j}] (text) needs a string 'text'", param="messages")
        if content_parts is not None and kind not in content_parts:
            raise BadRequest(
                f"messages[{i}].content[{j}] is a {kind!r} part; this node's model reads only "
                f"{', '.join(sorted(content_parts))} parts",
                param="messages",
            )


def validate_request(request: Any, *, content_parts: frozenset[str] | None = None) -> dict:
    """Check a chat request against what this node honours (OpenAI's ``/v1/chat/completions`` parameters).

    Every parameter is honoured or refused by name: an unknown one, or one this node cannot honour (``tools``,
    ``response_format`` other than text, ``logprobs``, penalties, ``n > 1``), is a 400 naming it, before anything
    is reserved. Non-finite or out-of-range numbers never reach an engine. Messages have OpenAI's roles (no tool
    messages) and content the engine reads: ``content_parts`` names the part types it takes (the node passes its
    engine's ``Engine.content_parts``; a text-only model never gets an image it would silently drop); None checks
    only the parts' shape (a workload file, before it knows which node serves it).

    Raises:
        BadRequest: the first problem found; ``fields["param"]`` names the parameter, as OpenAI's errors do.
    """
    if not isinstance(request, dict):
        raise BadRequest("the request body must be a JSON object")
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list", param="messages")
    for i, message in enumerate(messages):
        _validate_message(i, message, content_parts)
    for key in request:
        if not isinstance(key, str) or (key not in HONOURED and key not in NEUTRAL and key != "response_format"):
            if key in ("tools", "functions", "function_call"):
                raise BadRequest(f"'{key}' is not supported by this node (no tool calling)", param=key)
            raise BadRequest(f"unknown or unsupported parameter {key!r}", param=str(key))
    for key, neutral in NEUTRAL.items():
        value = request.get(key)
        if value is not None and not any(value == n and type(value) is type(n) for n in neutral):
            if not (isinstance(value, float) and value == 0.0 and 0 in neutral):
                raise BadRequest(f"'{key}' = {value!r} is not supported by this node", param=key)
    fmt = request.get("response_format")
    if fmt is not None and fmt != TEXT_FORMAT:
        raise BadRequest("'response_format' must be {\"type\": \"text\"}: this node has no JSON mode", param="response_format")
    model = request.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("'model' must be a string", param="model")
    for key in ("max_completion_tokens", "max_tokens"):
        value = request.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= U32_MAX):
            raise BadRequest(f"'{key}' must be an integer in [1, {U32_MAX}], got {value!r}", param=key)
    _number(request, "temperature", 0.0, 2.0)
    _number(request, "top_p", 0.0, 1.0, low_open=True)
    seed = request.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not INT64_MIN <= seed <= INT64_MAX):
        raise BadRequest(f"'seed' must be a 64-bit integer, got {seed!r}", param="seed")
    stop = request.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if (
            not isinstance(stops, list)
            or len(stops) > MAX_STOP_SEQUENCES
            or not all(isinstance(s, str) and s for s in stops)
        ):
            raise BadRequest(f"'stop' must be a non-empty string or a list of at most {MAX_STOP_SEQUENCES} of them",
                             param="stop")
    n = request.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        raise BadRequest("only n = 1 is supported", param="n")
    stream = request.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false", param="stream")
    options = request.get("stream_options")
    if options is not None:
        if not stream:
            raise BadRequest("'stream_options' is only allowed with 'stream': true", param="stream_options")
        if not isinstance(options, dict) or any(k not in ("include_usage", "continuous_usage_stats") for k in options) or not all(
            isinstance(v, bool) for v in options.values()
        ):
            raise BadRequest("'stream_options' takes only boolean 'include_usage' and 'continuous_usage_stats'",
                             param="stream_options")
    user = request.get("user")
    if user is not None and not isinstance(user, str):
        raise BadRequest("'user' must be a string", param="user")
    return request


def sampling_of(request: dict, *, default_seed: int | None = None, max_tokens: int | None = None) -> Sampling:
    """The decoding settings of a validated request: greedy unless ``temperature`` is at least
    :data:`GREEDY_BELOW_TEMPERATURE` (vLLM's threshold); sampling without a
    ``seed`` uses ``default_seed`` (the node passes a fresh random one and records it; replays pass the recorded
    one). ``max_tokens`` overrides the request's output budget (a replay of a stream its client dropped)."""
    temperature = float(request.get("temperature") or 0.0)
    if temperature < GREEDY_BELOW_TEMPERATURE:
        temperature = 0.0
    seed = request.get("seed")
    if temperature > 0 and seed is None:
        seed = default_seed if default_seed is not None else secrets.randbits(63)
    stop = request.get("stop")
    return Sampling(
        max_tokens=max_tokens if max_tokens is not None else max_output_tokens(request),
        temperature=temperature,
        top_p=float(request.get("top_p") if request.get("top_p") is not None else 1.0),
        seed=int(seed) if temperature > 0 else None,
        stop=tuple([stop] if isinstance(stop, str) else (stop or ())),
    )


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


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    """Threads for remote tokenizer calls, made on first use (none exist in a process that never estimates on a
    remote engine: the crash harness forks only thread-free processes)."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=16, thread_name_prefix="tokenize")
    return _POOL


def estimate(request: dict, engine: Engine) -> Estimate:
    """The reservation for one (validated) chat request on ``engine``.

    Raises:
        BadRequest: the engine cannot render the request (its chat template rejects the messages).
    """
    try:
        if getattr(engine, "remote_tokenizer", False):
            # two round trips to a remote tokenizer (the contents, the templated prompt): at once, not one after the
            # other (the first-token time of every request pays for them)
            templated_future = _pool().submit(engine.prompt_tokens, request)
            try:
                atoma = chat_estimate(request, engine.count_tokens)
            finally:
                templated = templated_future.result()
        else:
            atoma = chat_estimate(request, engine.count_tokens)
            templated = engine.prompt_tokens(request)
        budget = max_output_tokens(request)
    except EngineError as exc:
        raise BadRequest(str(exc)) from None
    except (TypeError, AttributeError, ValueError) as exc:
        raise BadRequest(f"malformed messages: {exc}") from None
    return _estimate(request, atoma, budget, templated)


#: prompts up to this many characters are counted on the event loop by an engine with a local tokenizer (~0.2 ms);
#: longer ones in a worker thread, so a huge prompt never stalls the other streams
INLINE_COUNT_CHARS = 16384


def prompt_chars(request: dict) -> int:
    """Characters of a (validated) request's message texts."""
    return sum(len(text) for message in request["messages"] for text in message_texts(message))


async def estimate_async(request: dict, engine: Any) -> Estimate:
    """:func:`estimate` on the event loop, for an engine that counts there (``acount_tokens`` and
    ``aprompt_tokens``: the ``openai`` engine, on the server's ``/tokenize`` — every count of the request at once
    over keep-alive connections, no thread and no blocking client per request — or on its local tokenizer for a
    short prompt).

    Raises:
        BadRequest: as :func:`estimate`.
    """
    try:
        texts = list(dict.fromkeys(t for m in request.get("messages", []) for t in message_texts(m)))
        counted = await asyncio.gather(engine.aprompt_tokens(request), *(engine.acount_tokens(t) for t in texts))
        known = dict(zip(texts, counted[1:]))
        atoma = chat_estimate(request, known.__getitem__)
        templated = counted[0]
        budget = max_output_tokens(request)
    except EngineError as exc:
        raise BadRequest(str(exc)) from None
    except (TypeError, AttributeError, ValueError, KeyError) as exc:
        raise BadRequest(f"malformed messages: {exc}") from None
    return _estimate(request, atoma, budget, templated)


def _estimate(request: dict, atoma: int, budget: int, templated: int | None) -> Estimate:
    if templated is None:
        bound = atoma + TEMPLATE_MARGIN + TEMPLATE_MARGIN_PER_MESSAGE * len(request["messages"])
        method = "margin"
    else:
        bound = int(templated) + budget
        method = "templated"
    return Estimate(atoma, budget, templated, bound, max(atoma, bound), method)
