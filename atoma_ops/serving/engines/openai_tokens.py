"""How the ``openai`` engine counts tokens: with the served model's own tokenizer here, or vLLM's ``/tokenize``.

With ``tokenizer`` (a transformers folder, or a GGUF file such as
:func:`~atoma_ops.serving.engines.cpu.smollm2_gguf_path`) the counts are made here, as the Atoma node does with the
model's own tokenizer: no round trip. Without it, vLLM's ``POST /tokenize`` (at the server root, beside ``/v1``),
twice per admitted request (the contents, the templated prompt); counts of message texts are remembered
(``COUNT_CACHE_SIZE``), since a conversation sends its earlier turns again with every request.

Two ways in: synchronous (``count_tokens``/``prompt_tokens``, the :class:`~.base.Engine` interface, over an
``httpx.Client``) and asynchronous (``acount_tokens``/``aprompt_tokens``, over the event loop's aiohttp session
and its keep-alive connections: what the node's admission uses, with no thread per request).

:class:`TokenCounting` is a mixin of :class:`~.openai_http.OpenAIHttpEngine`, which holds the settings and the
connections it reads (``tokenize_url``, ``timeout``, ``retries``, ``_state()``, ``_retry_delay``, …).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path
from typing import Any

import httpx

from .base import EngineError
from .upstream import TRANSPORT, dumps, read_whole

#: message texts whose token counts are remembered
COUNT_CACHE_SIZE = 4096


def cached_tokenizer(model: str, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The folder of ``model``'s tokenizer in the local HuggingFace cache (``HF_HUB_CACHE``, else the library's
    default): where ``vllm serve`` on this host downloaded it. None when it is not there; never downloads. Both
    ``tokenizer.json`` and ``tokenizer_config.json`` (the chat template) of one snapshot are needed."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    cache = cache_dir or os.environ.get("HF_HUB_CACHE") or None
    try:
        found = [try_to_load_from_cache(model, name, cache_dir=cache) for name in ("tokenizer.json", "tokenizer_config.json")]
    except Exception:  # noqa: BLE001 - a name that is no repo id (a path, "gpt-4o"...): not in the cache
        return None
    if not all(isinstance(f, str) for f in found):  # None (not cached) or a marker that it does not exist
        return None
    folders = {Path(f).parent for f in found}
    return folders.pop() if len(folders) == 1 else None


def _count_body(text: str) -> dict:
    return {"prompt": text, "add_special_tokens": False}


def _template_extra(request: dict) -> dict:
    return {key: request[key] for key in ("tools", "chat_template_kwargs") if request.get(key) is not None}


def _prompt_body(request: dict, extra: dict) -> dict:
    return {"messages": request["messages"], "add_generation_prompt": True, **extra}


class TokenCounting:
    """Token counts for an engine in front of an OpenAI-compatible server (see the module doc)."""

    def _sync_client(self) -> httpx.Client:
        with self._open_lock:
            if self._client is None:
                self._client = httpx.Client(
                    headers=self._headers,
                    timeout=self.timeout,
                    verify=self._tls(),
                    # httpx's sync transport writes headers and body apart: without TCP_NODELAY the body waits for
                    # the server's delayed ACK, 40 ms per /tokenize call (measured), twice per admitted request
                    transport=httpx.HTTPTransport(
                        limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
                        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
                    ),
                )
            return self._client

    def _post(self, url: str, body: dict) -> httpx.Response:
        """POST with bounded retries on connection errors and 5xx; any other failure raises EngineError."""
        attempt = 0
        while True:
            try:
                response = self._sync_client().post(url, json=body)
            except httpx.HTTPError as exc:
                time.sleep(self._retry_delay(exc, url, attempt))
                attempt += 1
                continue
            if response.status_code >= 500 and attempt < self.retries:
                time.sleep(self._backoff(attempt, f"HTTP {response.status_code} from {url}"))
                attempt += 1
                continue
            return response

    def _tokenize(self, body: dict) -> int | None:
        """vLLM's ``/tokenize``: the token count, or None when the server has no such endpoint."""
        if self._has_tokenize is False:
            return None
        return self._tokenize_answer(self._post(self.tokenize_url, {"model": self.model, **body}))

    def _tokenize_answer(self, response: Any) -> int | None:
        """The count in a ``/tokenize`` answer (read whole), or None when the server has no such endpoint."""
        if self._missing_endpoint(response):
            self._has_tokenize = False
            return None
        if response.status_code >= 400:
            raise self._error(f"tokenize failed: HTTP {response.status_code} from {self.tokenize_url}: "
                              f"{self._server_message(response)}")
        self._has_tokenize = True
        try:
            data = response.json()
        except ValueError:
            raise self._error(f"{self.tokenize_url} answered with no JSON: {response.text[:200]!r}") from None
        if not isinstance(data, dict):
            raise self._error(f"{self.tokenize_url} answered with {type(data).__name__}, not an object")
        if isinstance(data.get("max_model_len"), int) and data["max_model_len"] > 0:
            self.max_context = data["max_model_len"]  # vLLM says it with every answer
        if isinstance(data.get("count"), int):
            return data["count"]
        if isinstance(data.get("tokens"), list):
            return len(data["tokens"])
        raise self._error(f"{self.tokenize_url} answered without 'count' or 'tokens': {str(data)[:200]}")

    @staticmethod
    def _missing_endpoint(response: Any) -> bool:
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
                from .gguf import load_tokenizer

                path = self.tokenizer_path
                try:
                    self._tokenizer = load_tokenizer(path)
                except (OSError, ValueError) as exc:
                    raise EngineError(f"cannot load the tokenizer {path}: {exc}") from None
            return self._tokenizer

    def count_tokens(self, text: str) -> int:
        if self.tokenizer_path is not None:
            return self._local_count(text)
        cached = self._counts.get(text)
        if cached is not None:  # a conversation sends its earlier turns again with every request
            return cached
        return self._remember(text, self._tokenize(_count_body(text)))

    def _remember(self, text: str, count: int | None) -> int:
        if count is None:
            raise EngineError(
                f"cannot count tokens: {self.tokenize_url} does not exist on this server and no local tokenizer was "
                "given (pass tokenizer=... with the served model's tokenizer folder or GGUF file)"
            )
        with self._tokenizer_lock:  # admission threads fill it concurrently
            if len(self._counts) >= COUNT_CACHE_SIZE:
                self._counts.pop(next(iter(self._counts)))  # oldest first (dicts keep insertion order)
            self._counts[text] = count
        return count

    def prompt_tokens(self, request: dict) -> int | None:
        self._check_request(request)
        extra = _template_extra(request)
        if self.tokenizer_path is not None:
            return self._local_prompt_tokens(request["messages"], extra)
        return self._tokenize(_prompt_body(request, extra))

    # -- the same over the event loop's connections (admission of a request on a remote tokenizer) -------------

    async def acount_tokens(self, text: str) -> int:
        if self.tokenizer_path is not None:
            return self._local_count(text)
        cached = self._counts.get(text)
        if cached is not None:
            return cached
        return self._remember(text, await self._atokenize(_count_body(text)))

    async def aprompt_tokens(self, request: dict) -> int | None:
        self._check_request(request)
        extra = _template_extra(request)
        if self.tokenizer_path is not None:
            return self._local_prompt_tokens(request["messages"], extra)
        return await self._atokenize(_prompt_body(request, extra))

    async def _atokenize(self, body: dict) -> int | None:
        """:meth:`_tokenize` on the running loop's aiohttp session: no thread, no httpx (both were most of the
        node's CPU per request on a remote tokenizer)."""
        if self._has_tokenize is False:
            return None
        session = (await self._state()).session
        url, attempt = self.tokenize_url, 0
        payload = dumps({"model": self.model, **body})
        while True:
            try:
                response = await read_whole(await session.post(url, data=payload))
            except TRANSPORT as exc:
                await asyncio.sleep(self._retry_delay(exc, url, attempt))
                attempt += 1
                continue
            if response.status_code >= 500 and attempt < self.retries:
                await asyncio.sleep(self._backoff(attempt, f"HTTP {response.status_code} from {url}"))
                attempt += 1
                continue
            return self._tokenize_answer(response)

    def _local_prompt_tokens(self, messages: list, extra: dict) -> int | None:
        """The templated prompt's length as vLLM's ``/tokenize`` gives it: the chat template rendered with the
        generation prompt, then encoded without further special tokens. None when the tokenizer has no template
        (admission then reserves a margin)."""
        tokenizer = self._local_tokenizer()
        if not getattr(tokenizer, "chat_template", None):
            return None
        kwargs = dict(extra.get("chat_template_kwargs") or {})
        try:
            text = tokenizer.apply_chat_template(messages, tools=extra.get("tools"), add_generation_prompt=True,
                                                 tokenize=False, **kwargs)
        except Exception as exc:  # jinja's TemplateError and whatever the template raises on these messages
            raise EngineError(f"the chat template cannot render these messages: {exc}") from None
        return self._local_count(text)

    def _local_count(self, text: str) -> int:
        """Tokens of ``text`` (no special tokens added) by the fast tokenizer itself where there is one: the same
        ids as the transformers wrapper's ``encode``, at a quarter of its CPU (measured 17 µs against 78)."""
        tokenizer = self._local_tokenizer()
        backend = getattr(tokenizer, "_tokenizer", None)
        if backend is not None and hasattr(backend, "encode"):
            return len(backend.encode(text, add_special_tokens=False).ids)
        return len(tokenizer.encode(text, add_special_tokens=False))
