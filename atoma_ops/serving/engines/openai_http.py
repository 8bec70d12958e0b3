"""Any OpenAI-compatible ``/v1/chat/completions`` server as an engine (how a node uses ``vllm serve`` on a GPU host).

A batch is sent as concurrent requests (at most ``max_concurrency`` in flight) and the responses come back in the
batch's order. Each request is sent with the engine's ``model`` and ``stream: false``; each response must carry
``choices`` and ``usage`` (the metering needs them), or the batch fails with :class:`EngineError`.

Retries: only where the request cannot have been served — a connection that could not be opened or was dropped,
or a 5xx answer — at most ``retries`` times with a short exponential backoff. A 4xx answer, a read timeout or a
malformed response fails at once. Errors name the HTTP status and the server's own error message; the API key is
never logged nor put in an error or a ``repr``.

Token counts: vLLM's ``POST /tokenize`` (at the server root, beside ``/v1``) when the server has it; otherwise a
local tokenizer loaded from ``tokenizer_gguf`` (e.g. :func:`~atoma_ops.serving.engines.cpu.smollm2_gguf_path`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import httpx

from .base import Engine, EngineError

log = logging.getLogger(__name__)

# Transport errors after which the request cannot have produced a response worth keeping: safe to send again.
_RETRYABLE_TRANSPORT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError)
_MAX_ERROR_TEXT = 500


def server_error_message(response: httpx.Response) -> str:
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
    usage = body.get("usage")
    if not isinstance(usage, dict):
        raise EngineError("the server's response has no usage: it cannot be metered")
    for key in ("prompt_tokens", "completion_tokens"):
        value = usage.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise EngineError(f"the server's response has no valid usage.{key}: {value!r}")
    usage.setdefault("total_tokens", usage["prompt_tokens"] + usage["completion_tokens"])
    return body


def request_body(request: dict, model: str) -> dict:
    """What is sent for one request: the request with the engine's ``model``, ``stream: false``, and the decoding
    defaults every engine of this project shares (the CPU engine's): no ``temperature`` means greedy (OpenAI
    servers default to 1.0), and sampling without a ``seed`` uses seed 0 — so a replay reproduces it."""
    body = {key: value for key, value in request.items() if key != "stream_options"}
    body["model"] = model
    body["stream"] = False
    if body.get("temperature") is None:
        body["temperature"] = 0
    temperature = body["temperature"]
    if isinstance(temperature, (int, float)) and temperature > 0 and body.get("seed") is None:
        body["seed"] = 0
    return body


class OpenAIHttpEngine(Engine):
    """A client of an OpenAI-compatible server.

    Args:
        base_url: the API root including ``/v1``, e.g. ``http://gpu-host:8000/v1``.
        model: the served model name, sent in every request (it overrides the request's own ``model``).
        api_key: sent as ``Authorization: Bearer …`` when given.
        timeout: seconds for one HTTP request (a long generation must fit in it).
        max_concurrency: requests of a batch in flight at once.
        tokenizer_gguf: a GGUF file whose tokenizer counts tokens when the server has no ``/tokenize``.
        retries: extra attempts after a connection error or a 5xx answer.
        backoff: seconds before the first retry, doubled for each further one (capped at 2 s).
    """

    kind = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_concurrency: int = 8,
        tokenizer_gguf: str | os.PathLike | None = None,
        retries: int = 2,
        backoff: float = 0.2,
    ):
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout = timeout
        self.max_concurrency = max_concurrency
        self.retries = max(0, int(retries))
        self.backoff = backoff
        self.tokenizer_gguf = Path(tokenizer_gguf) if tokenizer_gguf else None
        root = self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url
        self.tokenize_url = f"{root}/tokenize"
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client: httpx.Client | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._open_lock = threading.Lock()
        self._has_tokenize: bool | None = None  # unknown until the first call
        self._tokenizer = None
        self._tokenizer_lock = threading.Lock()

    def __repr__(self) -> str:  # no headers: the api key stays out of logs and tracebacks
        return f"OpenAIHttpEngine(base_url={self.base_url!r}, model={self.model!r})"

    # -- HTTP ---------------------------------------------------------------------------------------------------

    def _open(self) -> tuple[httpx.Client, ThreadPoolExecutor]:
        """The connection pool and the worker threads, (re)made on first use: ``close`` only releases them, so
        an engine shared with code that closes what it is handed (as it may a CPU engine) keeps working."""
        with self._open_lock:
            if self._client is None or self._pool is None:
                self._client = httpx.Client(
                    headers=self._headers,
                    timeout=self.timeout,
                    limits=httpx.Limits(
                        max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency
                    ),
                )
                self._pool = ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="openai-http")
            return self._client, self._pool

    def _post(self, url: str, body: dict) -> httpx.Response:
        """POST with bounded retries on connection errors and 5xx; any other failure raises EngineError."""
        attempt = 0
        while True:
            try:
                response = self._open()[0].post(url, json=body)
            except _RETRYABLE_TRANSPORT as exc:
                if attempt < self.retries:
                    self._sleep(attempt, f"{type(exc).__name__} from {url}")
                    attempt += 1
                    continue
                raise EngineError(
                    f"cannot reach {url} after {attempt + 1} attempt(s): {type(exc).__name__}: {exc}"
                ) from None
            except httpx.TimeoutException as exc:
                raise EngineError(f"{url} did not answer within {self.timeout} s ({type(exc).__name__})") from None
            except httpx.HTTPError as exc:
                raise EngineError(f"request to {url} failed: {type(exc).__name__}: {exc}") from None
            if response.status_code >= 500 and attempt < self.retries:
                self._sleep(attempt, f"HTTP {response.status_code} from {url}")
                attempt += 1
                continue
            return response

    def _sleep(self, attempt: int, why: str) -> None:
        delay = min(self.backoff * (2**attempt), 2.0)
        log.warning("%s; retrying in %.2f s (attempt %d of %d)", why, delay, attempt + 2, self.retries + 1)
        time.sleep(delay)

    @staticmethod
    def _raise_for_status(response: httpx.Response, what: str) -> None:
        if response.status_code >= 400:
            raise EngineError(
                f"{what}: HTTP {response.status_code} from {response.request.url}: {server_error_message(response)}"
            )

    # -- chat ---------------------------------------------------------------------------------------------------

    def chat(self, requests: Sequence[dict]) -> list[dict]:
        requests = list(requests)
        for request in requests:
            validate_chat_request(request)
        if not requests:
            return []
        if len(requests) == 1:
            return [self._chat_one(requests[0])]
        pool = self._open()[1]
        futures = [pool.submit(self._chat_one, request) for request in requests]
        results, first_error = [], None
        for future in futures:  # wait for every request, so nothing of a failed batch is still running after
            try:
                results.append(future.result())
            except EngineError as exc:
                first_error = first_error or exc
            except Exception as exc:  # noqa: BLE001 - surfaced as the engine's error type
                first_error = first_error or EngineError(f"{type(exc).__name__}: {exc}")
        if first_error is not None:
            raise first_error
        return results

    def _chat_one(self, request: dict) -> dict:
        body = request_body(request, self.model)
        response = self._post(f"{self.base_url}/chat/completions", body)
        self._raise_for_status(response, "chat completion failed")
        try:
            payload = response.json()
        except ValueError:
            raise EngineError(f"the server's response is not JSON: {response.text[:200]!r}") from None
        return validate_chat_response(payload)

    # -- tokens -------------------------------------------------------------------------------------------------

    def _tokenize(self, body: dict) -> int | None:
        """vLLM's ``/tokenize``: the token count, or None when the server has no such endpoint."""
        if self._has_tokenize is False:
            return None
        response = self._post(self.tokenize_url, {"model": self.model, **body})
        if self._missing_endpoint(response):
            self._has_tokenize = False
            return None
        self._raise_for_status(response, "tokenize failed")
        self._has_tokenize = True
        try:
            data = response.json()
        except ValueError:
            raise EngineError(f"{self.tokenize_url} answered with no JSON: {response.text[:200]!r}") from None
        if not isinstance(data, dict):
            raise EngineError(f"{self.tokenize_url} answered with {type(data).__name__}, not an object")
        if isinstance(data.get("count"), int):
            return data["count"]
        if isinstance(data.get("tokens"), list):
            return len(data["tokens"])
        raise EngineError(f"{self.tokenize_url} answered without 'count' or 'tokens': {str(data)[:200]}")

    @staticmethod
    def _missing_endpoint(response: httpx.Response) -> bool:
        """The route does not exist (405/501, or a router's bare 404) — unlike vLLM's own 404 for an unknown
        model, which is an OpenAI error body and a real error."""
        if response.status_code in (405, 501):
            return True
        if response.status_code != 404:
            return False
        try:
            body = response.json()
        except ValueError:
            return True
        return not (isinstance(body, dict) and isinstance(body.get("error"), dict))

    def _local_tokenizer(self):
        with self._tokenizer_lock:
            if self._tokenizer is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                from transformers import AutoTokenizer

                path = self.tokenizer_gguf
                self._tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            return self._tokenizer

    def count_tokens(self, text: str) -> int:
        count = self._tokenize({"prompt": text, "add_special_tokens": False})
        if count is not None:
            return count
        if self.tokenizer_gguf is not None:
            return len(self._local_tokenizer().encode(text, add_special_tokens=False))
        raise EngineError(
            f"cannot count tokens: {self.tokenize_url} does not exist on this server and no local tokenizer was "
            "given (pass tokenizer_gguf=... with the served model's GGUF file)"
        )

    def prompt_tokens(self, request: dict) -> int | None:
        validate_chat_request(request)
        body: dict = {"messages": request["messages"], "add_generation_prompt": True}
        for key in ("tools", "chat_template_kwargs"):
            if request.get(key) is not None:
                body[key] = request[key]
        return self._tokenize(body)

    def close(self) -> None:
        """Release the connections and threads (idempotent; a later call opens new ones)."""
        with self._open_lock:
            client, pool, self._client, self._pool = self._client, self._pool, None, None
        if pool is not None:
            pool.shutdown(wait=True)
        if client is not None:
            client.close()
