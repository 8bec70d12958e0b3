"""Any OpenAI-compatible ``/v1/chat/completions`` server as an engine (how a node uses ``vllm serve`` on a GPU host).

Each request is its own streamed HTTP request (``stream: true``): the server batches them (vLLM's continuous
batching), this engine only relays. What is sent: the engine's ``model``, the request's ``messages`` and the decoding
settings of :class:`~.base.Sampling` — nothing else of the request — plus ``stream_options`` asking for usage
(``include_usage``) and for usage on every chunk (``continuous_usage_stats``, vLLM's extension: a server that answers
400 naming it is asked again without it, and never again after). A ``max_tokens`` above the context the server
reported (vLLM's ``/tokenize`` answers say ``max_model_len``) is capped to it.

The SSE chunks are relayed one by one as :class:`~.base.Delta` items: a chunk's tokens are the growth of its running
usage where the server reports one (vLLM with ``continuous_usage_stats``), else 1 per chunk with text; the last delta
carries the ``finish_reason`` and the rest of the final usage, so the tokens of all the deltas add up to the final
``usage.completion_tokens`` exactly. A server that ignores ``stream`` and answers one JSON body gives one delta.

Concurrency: at most ``max_concurrency`` requests in flight per event loop (default 256: vLLM's default
``--max-num-seqs``), over keep-alive connections held per event loop by an ``aiohttp.ClientSession``
(:mod:`.upstream`: httpx's pool and h11 were over half of the node's CPU per relayed request).
``stream`` works from any loop: a loop's session is closed when that loop shuts its async generators down, as
``asyncio.run`` does, or by :meth:`close`.

Retries: only before anything was relayed — a connection that could not be opened or was dropped before the
response started, or a 5xx answer — at most ``retries`` times with a short exponential backoff. A 4xx answer, a
timeout or a malformed response fails at once. Errors name the HTTP status and the server's own error message; the
API key is never logged nor put in an error or a ``repr``.

Closing the stream early (``aclose()``, a cancelled task) closes the upstream response at once: vLLM then aborts the
request and frees its share of the batch.

Token counts (:mod:`.openai_tokens`): with ``tokenizer`` (the served model's tokenizer: a transformers folder, or a
GGUF file), counted here, as the Atoma node does; without it, vLLM's ``POST /tokenize`` — synchronously
(``count_tokens``/``prompt_tokens``) or on the event loop's connections (``acount_tokens``/``aprompt_tokens``, what
the node's admission uses).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import threading
import weakref
from contextlib import aclosing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, AsyncIterator, Iterable

import aiohttp
import httpx

from .base import Delta, Engine, EngineError, Sampling
from .openai_tokens import TokenCounting
from .upstream import RETRYABLE, TIMEOUTS, TRANSPORT, Answer, dumps, loads, open_session, read_whole

log = logging.getLogger(__name__)

_MAX_ERROR_TEXT = 500
#: vLLM's extension of ``stream_options``: usage on every chunk
CONTINUOUS_USAGE = "continuous_usage_stats"
DEFAULT_MAX_CONCURRENCY = 256


def server_error_message(response: httpx.Response | Answer) -> str:
    """The server's own words for an error: OpenAI's ``{"error": {"message"}}``, FastAPI's ``{"detail"}``,
    vLLM's older ``{"message"}``, else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:_MAX_ERROR_TEXT]
        if isinstance(error, str) and error:
            return error[:_MAX_ERROR_TEXT]
        for key in ("detail", "message"):
            if body.get(key):
                return str(body[key])[:_MAX_ERROR_TEXT]
    text = response.text.strip()
    return text[:_MAX_ERROR_TEXT] if text else response.reason_phrase


def validate_chat_request(request: Any) -> None:
    """The shape every engine insists on before running: a dict with a non-empty ``messages`` list of dicts."""
    if not isinstance(request, dict):
        raise EngineError(f"a chat request is a JSON object, not {type(request).__name__}")
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise EngineError("a chat request needs a non-empty 'messages' list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise EngineError(f"message {i} is not an object with a 'role'")
    if request.get("n") not in (None, 1):
        raise EngineError("only n=1 is supported (one choice per request)")


def _usage(usage: Any) -> dict:
    """Integer, non-negative ``prompt_tokens`` and ``completion_tokens`` (a usage that cannot be metered is an
    EngineError); ``total_tokens`` filled in when missing."""
    if not isinstance(usage, dict):
        raise EngineError("the server's response has no usage: it cannot be metered")
    for key in ("prompt_tokens", "completion_tokens"):
        value = usage.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise EngineError(f"the server's response has no valid usage.{key}: {value!r}")
    usage.setdefault("total_tokens", usage["prompt_tokens"] + usage["completion_tokens"])
    return usage


def validate_chat_response(body: Any) -> dict:
    """A ``chat.completion`` with at least one choice holding a message, and integer usage counts."""
    if not isinstance(body, dict):
        raise EngineError(f"the server's response is not a JSON object: {str(body)[:200]}")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        raise EngineError("the server's response has no choices")
    for choice in choices:
        if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
            raise EngineError("a choice in the server's response has no message")
    _usage(body.get("usage"))
    return body


def request_body(request: dict, model: str, sampling: Sampling, *, continuous_usage: bool = True) -> dict:
    """What is sent for one request: the engine's ``model``, the request's ``messages``, the decoding settings of
    ``sampling`` (``top_p`` and ``seed`` only when sampling), ``stream: true`` with usage asked for."""
    body: dict[str, Any] = {
        "model": model,
        "messages": request["messages"],
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
    }
    if not sampling.greedy:
        body["top_p"] = sampling.top_p
        if sampling.seed is not None:
            body["seed"] = sampling.seed
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    body["stream"] = True
    body["stream_options"] = {"include_usage": True, **({CONTINUOUS_USAGE: True} if continuous_usage else {})}
    return body


class ChunkRelay:
    """Turns the ``chat.completion.chunk`` objects of one stream into :class:`Delta` items (pure: no I/O).

    ``feed(chunk)`` returns the delta a chunk adds (or None: a role-only chunk, a usage-only chunk, or anything from
    the chunk with the ``finish_reason`` on, which is held back); ``finish()`` returns the last delta, once the
    stream ended, with the finish reason and the tokens that make Σ tokens equal the final
    ``usage.completion_tokens``.
    """

    def __init__(self) -> None:
        self.emitted = 0  # completion tokens of the deltas returned so far
        self.prompt_tokens: int | None = None
        self.prompt_sent: int | None = None
        self.usage: dict | None = None
        self.finish_reason: str | None = None
        self.tail: list[str] = []
        self.chunks = 0

    def feed(self, chunk: Any) -> Delta | None:
        if not isinstance(chunk, dict):
            raise EngineError(f"the server sent a chunk that is not a JSON object: {str(chunk)[:200]}")
        error = chunk.get("error")
        if error and not chunk.get("choices"):
            message = error.get("message") if isinstance(error, dict) else error
            raise EngineError(f"the server failed while streaming: {str(message)[:_MAX_ERROR_TEXT]}")
        self.chunks += 1
        running = None
        if chunk.get("usage") is not None:
            running = _usage(chunk["usage"])
            self.usage = running
            if self.prompt_tokens is None:
                self.prompt_tokens = running["prompt_tokens"]
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise EngineError(f"the server sent a chunk whose choices are not a list: {str(chunk)[:200]}")
        choice = next((c for c in choices if isinstance(c, dict) and c.get("index", 0) == 0), None)
        if choice is None:
            return None
        delta = choice.get("delta") or {}
        content = delta.get("content") if isinstance(delta, dict) else None
        text = content if isinstance(content, str) else ""
        finish = choice.get("finish_reason")
        if finish or self.finish_reason is not None:  # the last delta waits for the final usage
            self.finish_reason = self.finish_reason or str(finish)
            self.tail.append(text)
            return None
        if running is not None:
            tokens = running["completion_tokens"] - self.emitted
            if tokens < 0:
                raise EngineError(
                    f"malformed usage: completion_tokens went down to {running['completion_tokens']} after "
                    f"{self.emitted} tokens were streamed"
                )
        else:
            tokens = 1 if text else 0
        if not text and not tokens:
            return None
        self.emitted += tokens
        return Delta(text=text, tokens=tokens, prompt_tokens=self._take_prompt())

    def _take_prompt(self) -> int | None:
        if self.prompt_sent is None and self.prompt_tokens is not None:
            self.prompt_sent = self.prompt_tokens
            return self.prompt_tokens
        return None

    def finish(self) -> Delta:
        if self.finish_reason is None:
            raise EngineError(f"the server's stream ended without a finish_reason (after {self.chunks} chunks)")
        if self.usage is None:
            raise EngineError("the server's stream has no usage: it cannot be metered")
        tokens = self.usage["completion_tokens"] - self.emitted
        if tokens < 0:
            raise EngineError(
                f"malformed usage: the final usage counts {self.usage['completion_tokens']} completion tokens but "
                f"{self.emitted} were streamed"
            )
        prompt = self.usage["prompt_tokens"]
        return Delta(
            text="".join(self.tail),
            tokens=tokens,
            prompt_tokens=prompt if prompt != self.prompt_sent else None,
            finish_reason=self.finish_reason,
        )


def response_delta(body: Any) -> Delta:
    """The one delta of a server that answered a whole ``chat.completion`` instead of a stream."""
    body = validate_chat_response(body)
    choice = body["choices"][0]
    content = choice["message"].get("content")
    return Delta(
        text=content if isinstance(content, str) else "",
        tokens=body["usage"]["completion_tokens"],
        prompt_tokens=body["usage"]["prompt_tokens"],
        finish_reason=str(choice.get("finish_reason") or "stop"),
    )


async def sse_data(pieces: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """The ``data`` of each server-sent event of a body read as it comes (``pieces``: aiohttp's
    ``response.content.iter_any()``, whatever arrived since the last read), comments, ``event:`` and ``id:`` lines
    skipped; several ``data:`` lines of one event joined with newlines, as the SSE spec says; lines end with LF or
    CRLF.

    Split here from the raw pieces rather than read line by line (``async for line in response.content``): one
    await per network read instead of two per event, which shows at hundreds of streams; a line is decoded once it
    is whole, so a character split between two network reads is never cut."""
    buffer = b""
    data: list[str] = []
    async for piece in pieces:
        buffer += piece
        if b"\n" not in piece:
            continue
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if data:
                    yield "\n".join(data)
                    data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append((value[1:] if value.startswith(b" ") else value).decode("utf-8", "replace"))
    line = buffer[:-1] if buffer.endswith(b"\r") else buffer
    if line.startswith(b"data:"):
        value = line[5:]
        data.append((value[1:] if value.startswith(b" ") else value).decode("utf-8", "replace"))
    if data:
        yield "\n".join(data)


async def _close_session_when_the_loop_ends(session: aiohttp.ClientSession) -> AsyncIterator[None]:
    """Suspended once per loop: the loop's ``shutdown_asyncgens`` (``asyncio.run`` calls it) resumes it to close the
    loop's session, so none outlives its loop (and aiohttp never warns of an unclosed one)."""
    try:
        yield
    finally:
        await session.close()


@dataclass
class _LoopState:
    """One event loop's share of the engine: its session (connections), the semaphore bounding its requests in
    flight, and the keeper that closes the session."""

    session: aiohttp.ClientSession
    slots: asyncio.Semaphore
    keeper: Any  # the async generator above

    @property
    def is_closed(self) -> bool:
        return self.session.closed


class OpenAIHttpEngine(TokenCounting, Engine):
    """A client of an OpenAI-compatible server.

    Args:
        base_url: the API root including ``/v1``, e.g. ``http://gpu-host:8000/v1``.
        model: the served model name, sent in every request (it overrides the request's own ``model``).
        api_key: sent as ``Authorization: Bearer …`` when given.
        timeout: seconds the server may stay silent: to connect, to start answering, between two chunks.
        max_concurrency: requests in flight at once (per event loop); more wait for a free slot.
        tokenizer: the served model's tokenizer (a transformers folder or a GGUF file): counts tokens here instead
            of asking the server's ``/tokenize``. Its counts must be the server's (the same model's tokenizer).
        task_models: the task model names (HuggingFace names) the served model is, when the server serves it under
            another name (``vllm serve … --served-model-name``); ``model`` itself always is one.
        retries: extra attempts after a connection error or a 5xx answer.
        backoff: seconds before the first retry, doubled for each further one (capped at 2 s).
    """

    kind = "openai"
    content_parts = None  # relayed as sent: the server behind it reads images if its model does, or refuses them
    remote_tokenizer = True  # without a local tokenizer counting is an HTTP call: metering.estimate makes both at once

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        tokenizer: str | os.PathLike | None = None,
        retries: int = 2,
        backoff: float = 0.2,
        task_models: Iterable[str] = (),
    ):
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.task_models = frozenset(task_models) | {model}
        self.timeout = timeout
        self.max_concurrency = int(max_concurrency)
        self.retries = max(0, int(retries))
        self.backoff = backoff
        self.tokenizer_path = Path(tokenizer) if tokenizer else None
        self.remote_tokenizer = self.tokenizer_path is None
        root = self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url
        self.chat_url = f"{self.base_url}/chat/completions"
        self.tokenize_url = f"{root}/tokenize"
        self._api_key = api_key or None
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._continuous_usage = True  # until the server refuses it
        self._states: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState]" = weakref.WeakKeyDictionary()
        self._states_lock = threading.Lock()
        self._client: httpx.Client | None = None  # sync, for /tokenize
        self._ssl_context: ssl.SSLContext | None = None
        self._tls_lock = threading.Lock()
        self._open_lock = threading.Lock()
        self._has_tokenize: bool | None = None  # unknown until the first call
        self._tokenizer = None
        self._counts: dict[str, int] = {}  # token counts of message texts already asked (bounded, oldest dropped)
        self._tokenizer_lock = threading.Lock()
        if self.tokenizer_path is not None:
            self._local_tokenizer()  # now: a path that holds no tokenizer fails the engine, not every request

    _server_message = staticmethod(server_error_message)  # for TokenCounting
    _check_request = staticmethod(validate_chat_request)

    def __repr__(self) -> str:  # no headers: the api key stays out of logs and tracebacks
        return f"OpenAIHttpEngine(base_url={self.base_url!r}, model={self.model!r})"

    def _scrub(self, text: str) -> str:
        """An error text with the API key blanked out, should a server ever echo it."""
        return text.replace(self._api_key, "***") if self._api_key else text

    def serves_model(self, name: str) -> bool:
        return name in self.task_models

    def _error(self, message: str, status: int | None = None) -> EngineError:
        return EngineError(self._scrub(message), status=status)

    # -- per event loop: its connections, one semaphore ---------------------------------------------------------

    async def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        with self._states_lock:
            state = self._states.get(loop)
        if state is not None:
            return state
        tls = self._tls()
        session = open_session(headers=self._headers, timeout=self.timeout, max_streams=self.max_concurrency,
                               ssl_context=tls if isinstance(tls, ssl.SSLContext) else None)
        keeper = _close_session_when_the_loop_ends(session)
        await keeper.__anext__()
        fresh = _LoopState(session, asyncio.Semaphore(self.max_concurrency), keeper)
        with self._states_lock:
            for old in [other for other in self._states if other.is_closed()]:
                del self._states[old]  # its connections were closed when it shut down
            state = self._states.setdefault(loop, fresh)
        if state is not fresh:
            await keeper.aclose()
        return state

    def _tls(self) -> ssl.SSLContext | bool:
        """One TLS context for all the engine's connections and its /tokenize client (loading the CA bundle costs
        tens of ms); none needed for plain http."""
        if not self.base_url.startswith("https:"):
            return False
        with self._tls_lock:
            if self._ssl_context is None:
                self._ssl_context = httpx.create_ssl_context()  # what httpx uses by default, made once
            return self._ssl_context

    # -- chat ---------------------------------------------------------------------------------------------------

    async def stream(self, request: dict, sampling: Sampling) -> AsyncIterator[Delta]:
        validate_chat_request(request)
        if self.max_context and sampling.max_tokens > self.max_context:
            # vLLM refuses a max_tokens above its context (and caps the rest to what the prompt leaves)
            sampling = replace(sampling, max_tokens=self.max_context)
        state = await self._state()
        async with state.slots:
            response = await self._open_stream(state.session, request, sampling)
            try:
                async with aclosing(self._relay(response)) as deltas:
                    async for delta in deltas:
                        yield delta
            finally:
                if response.content.is_eof():
                    response.release()  # read to its end: the connection goes back to the session
                else:
                    response.close()  # closed early: the server sees the client go (vLLM aborts the request)

    async def _open_stream(self, session: aiohttp.ClientSession, request: dict, sampling: Sampling) -> Any:
        """POST the request and wait for the response to start: bounded retries on connection errors and 5xx; a
        4xx (bar one naming ``continuous_usage_stats``, asked again without it) raises EngineError."""
        url = self.chat_url
        attempt = 0
        asked_without_continuous = False
        while True:
            continuous = self._continuous_usage
            body = request_body(request, self.model, sampling, continuous_usage=continuous)
            try:
                response = await session.post(url, data=dumps(body))
            except TRANSPORT as exc:
                await asyncio.sleep(self._retry_delay(exc, url, attempt))
                attempt += 1
                continue
            if response.status < 400:
                return response
            try:
                answer = await read_whole(response)
            except TRANSPORT:
                answer = Answer(response.status, b"", response.reason)
            message = server_error_message(answer)
            if answer.status_code >= 500 and attempt < self.retries:
                await asyncio.sleep(self._backoff(attempt, f"HTTP {answer.status_code} from {url}"))
                attempt += 1
                continue
            if (
                answer.status_code == 400
                and continuous
                and not asked_without_continuous
                and CONTINUOUS_USAGE in message
            ):
                log.info("%s refuses stream_options.%s: asking without it from now on", url, CONTINUOUS_USAGE)
                self._continuous_usage = False
                asked_without_continuous = True
                continue
            raise self._error(f"chat completion failed: HTTP {answer.status_code} from {url}: {message}",
                              answer.status_code)

    async def _relay(self, response: aiohttp.ClientResponse) -> AsyncIterator[Delta]:
        url = self.chat_url
        relay = ChunkRelay()
        try:
            if "text/event-stream" not in response.headers.get("content-type", ""):
                raw = await response.read()  # a server that ignored stream: one JSON body, one delta
                try:
                    body = loads(raw)
                except ValueError:
                    raise self._error(f"the server's response is neither SSE nor JSON: {raw[:200]!r}") from None
                yield response_delta(body)
                return
            events = sse_data(response.content.iter_any())
            try:
                async for data in events:
                    if data.strip() == "[DONE]":
                        break
                    try:
                        chunk = loads(data)
                    except ValueError:
                        raise self._error(f"the server sent a chunk that is not JSON: {data[:200]!r}") from None
                    delta = relay.feed(chunk)
                    if delta is not None:
                        yield delta
                final = relay.finish()
            except BaseException:
                await events.aclose()
                raise
        except TIMEOUTS as exc:
            raise self._error(
                f"{url} sent nothing for {self.timeout} s after {relay.chunks} chunks ({type(exc).__name__})"
            ) from None
        except TRANSPORT as exc:
            raise self._error(
                f"the stream from {url} broke after {relay.chunks} chunks: {type(exc).__name__}: {exc}"
            ) from None
        try:
            yield final  # at [DONE]: the caller has everything without waiting for the body to end
            async for _ in events:  # then read the body to its end, so the connection goes back to the pool
                pass
        except TRANSPORT:
            pass  # the answer is complete; only the connection is lost
        finally:
            await events.aclose()

    def _retry_delay(self, exc: Exception, url: str, attempt: int) -> float:
        """How long to wait before sending the request again after ``exc`` (logged), when it may be sent again: it
        cannot have been served and retries are left. Otherwise raises the EngineError that ends it. The same rule
        for the streamed chat (aiohttp) and the /tokenize calls (aiohttp, httpx)."""
        if isinstance(exc, RETRYABLE):
            if attempt < self.retries:
                return self._backoff(attempt, f"{type(exc).__name__} from {url}")
            raise self._error(
                f"cannot reach {url} after {attempt + 1} attempt(s): {type(exc).__name__}: {exc}"
            ) from None
        if isinstance(exc, TIMEOUTS):
            raise self._error(f"{url} did not answer within {self.timeout} s ({type(exc).__name__})") from None
        raise self._error(f"request to {url} failed: {type(exc).__name__}: {exc}") from None

    def _backoff(self, attempt: int, why: str) -> float:
        delay = min(self.backoff * (2**attempt), 2.0)
        log.warning("%s; retrying in %.2f s (attempt %d of %d)", why, delay, attempt + 2, self.retries + 1)
        return delay

    # -- lifetime -----------------------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the running loop's client (the others stay: see :meth:`close`)."""
        loop = asyncio.get_running_loop()
        with self._states_lock:
            state = self._states.pop(loop, None)
        if state is not None:
            await state.keeper.aclose()

    def close(self) -> None:
        """Release every connection (idempotent; a later call opens new ones). A loop's client is closed on that
        loop: at once when it is not running, as a task when it is this thread's running loop, else handed to
        it and waited for (5 s at most); a loop already closed closed its client when it shut down."""
        with self._states_lock:
            states = list(self._states.items())
            self._states.clear()
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, state in states:
            if loop.is_closed():
                continue
            try:
                if loop is current:
                    loop.create_task(state.keeper.aclose())
                elif loop.is_running():
                    asyncio.run_coroutine_threadsafe(state.keeper.aclose(), loop).result(timeout=5)
                else:
                    loop.run_until_complete(state.keeper.aclose())
            except Exception as exc:  # noqa: BLE001 - best effort: a loop going away closes its client itself
                log.debug("closing the HTTP client of %r: %s: %s", loop, type(exc).__name__, exc)
        with self._open_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
