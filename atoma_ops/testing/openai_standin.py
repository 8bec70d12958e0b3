"""A stand-in for ``vllm serve`` on a GPU: an OpenAI-compatible HTTP server on 127.0.0.1 for tests and benchmarks.

Two parts, usable apart:

- :class:`StandinEngine`, a fake model: it answers every request after a fixed per-request ``latency`` (plus an
  optional ``token_delay`` between tokens) with text derived deterministically from the request — the same messages
  and decoding settings always give the same words; seeded sampling varies with the seed, unseeded sampling is
  random — and it has no concurrency limit (it only ``asyncio.sleep``s), so it measures the ceiling of whatever sits
  in front of it, never its own. Its tokenizer is whitespace: a token is a word, the chat template renders each
  message as ``<|im_start|>role content <|im_end|>`` and ends with ``<|im_start|>assistant``, and the usage it
  reports always agrees with ``/tokenize``.
- :class:`OpenAIServer`, the HTTP front of any :class:`~atoma_ops.serving.engines.base.Engine` (the stand-in, or a
  real one): ``POST /v1/chat/completions`` (``stream`` true or false; SSE with one chunk per engine delta, the role
  chunk with the first one, ``stream_options.include_usage`` for a final usage chunk and vLLM's
  ``continuous_usage_stats`` for usage on every chunk), vLLM's ``POST /tokenize``, ``GET /v1/models`` and
  ``GET /health``; vLLM's errors (404 for another model, 400 for a bad request, 401 without the API key when one is
  set). It counts what it saw (``requests``, ``completed``, ``disconnects``, ``in_flight``, ``max_in_flight``,
  ``completion_tokens``, and the ``peers`` — client address and port — chat requests came from, i.e. connections) and keeps the last request bodies; ``faults`` injects failures into the next chat requests.
  Used as a context manager it runs on a free loopback port in a daemon thread (:class:`BackgroundServer`).

::

    with standin(latency=0.5) as server:           # OpenAIServer(StandinEngine(latency=0.5))
        engine = OpenAIHttpEngine(server.base_url, server.model)

Run it as its own process (so a benchmark's client does not share its interpreter)::

    python -m atoma_ops.testing.openai_standin --port 8100 --latency 0.5

Nothing here contacts anything but 127.0.0.1. Product code never imports this module.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import secrets
from pathlib import Path
import time
import uuid
from collections import deque
from contextlib import aclosing
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..protocol.compute_units import message_texts
from ..serving.engines.base import Delta, Engine, EngineError, Generation, Sampling
from ..serving.server import BackgroundServer, free_socket

STANDIN_MODEL = "atoma-ops/openai-standin"
_WORDS = (
    "the a node stack answers every request after its latency and streams one word per token while the client "
    "waits for usage tokens units settle commit attest proof merkle root epoch task model engine batch queue "
    "stream chunk delta signal keeper buyer seller sui move object event ledger history replay seed greedy "
    "sample window context prompt reply token budget charge reserve refund quiet bright swift calm steady"
).split()

#: what ``faults`` accepts besides an HTTP status (int): see OpenAIServer
FAULTS = ("no-usage", "bad-usage", "short-usage", "drop", "error-chunk", "no-finish")


# ------------------------------------------------------------------------------------------------ the engine
class StandinEngine(Engine):
    """A deterministic fake model with a fixed latency and unlimited concurrency (see the module doc).

    Args:
        model: the name it serves.
        latency: seconds before the first token of every request, whatever the concurrency.
        token_delay: seconds between two tokens of a request.
        max_context: the context window (prompt + completion tokens).
        answer_words: (fewest, most) words of a natural answer; its length within them comes from the request.
    """

    kind = "standin"

    def __init__(
        self,
        model: str = STANDIN_MODEL,
        *,
        latency: float = 0.0,
        token_delay: float = 0.0,
        max_context: int = 8192,
        answer_words: tuple[int, int] = (8, 24),
    ):
        self.model = model
        self.latency = float(latency)
        self.token_delay = float(token_delay)
        self.max_context = int(max_context)
        self.answer_words = answer_words
        self.streams_opened = 0
        self.streams_closed_early = 0

    # the tokenizer: whitespace-separated words
    def count_tokens(self, text: str) -> int:
        return len(text.split())

    @staticmethod
    def render(messages: list[dict]) -> str:
        """The prompt as the fake model reads it (its "chat template")."""
        parts = [f"<|im_start|>{m['role']} {' '.join(message_texts(m))} <|im_end|>" for m in messages]
        return " ".join(parts + ["<|im_start|>assistant"])

    def prompt_tokens(self, request: dict) -> int | None:
        _check(request)
        return self.count_tokens(self.render(request["messages"]))

    def answer(self, request: dict, sampling: Sampling) -> list[str]:
        """The words of the natural answer (before ``max_tokens`` and ``stop``): a function of the messages and,
        when sampling, of the seed and temperature."""
        key = json.dumps(request["messages"], sort_keys=True, default=str)
        if not sampling.greedy:
            seed = sampling.seed if sampling.seed is not None else secrets.randbits(63)
            key += f"|{sampling.temperature}|{sampling.top_p}|{seed}"
        rng = random.Random(hashlib.sha256(key.encode()).digest())
        low, high = self.answer_words
        return [rng.choice(_WORDS) for _ in range(rng.randint(low, high))]

    async def stream(self, request: dict, sampling: Sampling) -> AsyncIterator[Delta]:
        prompt = self.prompt_tokens(request)
        if prompt >= self.max_context:
            raise EngineError(f"the prompt ({prompt} tokens) leaves no room in the {self.max_context}-token context")
        budget = min(sampling.max_tokens, self.max_context - prompt)
        words = self.answer(request, sampling)
        produced = words[:budget]
        natural_end = len(words) <= budget
        stops = [s for s in sampling.stop if s]
        hold = max((len(s) for s in stops), default=1) - 1  # text that may still turn out to start a stop string
        self.streams_opened += 1
        finished = False
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            text, sent = "", 0
            for i, word in enumerate(produced):
                if i and self.token_delay:
                    await asyncio.sleep(self.token_delay)
                text += (" " if i else "") + word
                first = prompt if i == 0 else None
                cuts = [text.find(s) for s in stops if s in text]
                if cuts:
                    finished = True
                    yield Delta(text[sent : min(cuts)], 1, first, "stop")
                    return
                if i == len(produced) - 1:
                    finished = True
                    yield Delta(text[sent:], 1, first, "stop" if natural_end else "length")
                    return
                safe = max(sent, len(text) - hold)
                piece, sent = text[sent:safe], safe
                yield Delta(piece, 1, first)
        finally:
            if not finished:
                self.streams_closed_early += 1


def _check(request: Any) -> None:
    if not isinstance(request, dict):
        raise EngineError("a chat request is a JSON object")
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise EngineError("'messages' must be a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise EngineError(f"messages[{i}] must be an object with a string 'role'")
        if message.get("content") is not None and not isinstance(message["content"], (str, list)):
            raise EngineError(f"messages[{i}].content must be a string or a list of parts")


# ------------------------------------------------------------------------------------------------ the server
def openai_error(status: int, message: str, kind: str = "BadRequestError", param: str | None = None) -> JSONResponse:
    """An error body as vLLM and OpenAI send it."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}}, status)


def _sse(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


class _Refused(Exception):
    def __init__(self, response: JSONResponse):
        self.response = response


class OpenAIServer:
    """An OpenAI-compatible HTTP server in front of an engine (see the module doc).

    Args:
        engine: what answers; its ``model`` is the one name served.
        api_key: when set, every route but ``/health`` wants ``Authorization: Bearer <api_key>`` (else 401).
        tokenize: serve vLLM's ``POST /tokenize``.
        continuous_usage: honour ``stream_options.continuous_usage_stats`` (False: ignore it, as a server without
            that extension does).
        reject_continuous_usage: answer 400 naming ``continuous_usage_stats`` when asked for it (OpenAI does).
        ignore_stream: answer one JSON body even when asked to stream.
        keep_bodies: how many of the last request bodies ``bodies`` keeps.

    ``faults`` (a deque) is consumed one item per chat request: an HTTP status (int) answers that status at once;
    "no-usage" streams no usage at all; "bad-usage" ends with ``completion_tokens: "many"``; "short-usage" ends with
    a usage smaller than what was streamed; "drop" cuts the connection after two chunks; "error-chunk" sends an
    error event mid-stream; "no-finish" ends the stream without a finish reason.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        api_key: str | None = None,
        tokenize: bool = True,
        continuous_usage: bool = True,
        reject_continuous_usage: bool = False,
        ignore_stream: bool = False,
        keep_bodies: int = 1000,
    ):
        self.engine = engine
        self.model = engine.model
        self.api_key = api_key
        self.tokenize = tokenize
        self.continuous_usage = continuous_usage
        self.reject_continuous_usage = reject_continuous_usage
        self.ignore_stream = ignore_stream
        self.faults: deque = deque()
        self.bodies: deque = deque(maxlen=keep_bodies)
        self.reset()
        self.app = self._build_app()
        self._runner: BackgroundServer | None = None

    def reset(self) -> None:
        """Zero the counters and forget the bodies and pending faults."""
        self.requests = 0  # chat requests received
        self.completed = 0  # chat requests answered to the end
        self.disconnects = 0  # streams whose client left before the end
        self.in_flight = 0
        self.max_in_flight = 0
        self.completion_tokens = 0  # produced, streams cut short included
        self.peers: set = set()  # (host, port) of the connections chat requests came on
        self.faults.clear()
        self.bodies.clear()

    # -- running ------------------------------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> "OpenAIServer":
        self._runner = BackgroundServer(self.app, host, port, lifespan="off").start()
        return self

    def stop(self) -> None:
        if self._runner is not None:
            self._runner.stop()
            self._runner = None

    def __enter__(self) -> "OpenAIServer":
        return self.start() if self._runner is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._runner is None:
            raise RuntimeError("the server is not running")
        return self._runner.url

    @property
    def base_url(self) -> str:
        """The API root to give an OpenAI client (``…/v1``)."""
        return f"{self.url}/v1"

    def client(self, **options: Any):
        """An :class:`~atoma_ops.serving.engines.openai_http.OpenAIHttpEngine` for this server (fast backoff). It
        plays ``vllm serve`` of SmolLM2 under a served name of its own: a node in front of it serves SmolLM2 tasks."""
        from ..serving.engines.base import SMOLLM2_MODEL
        from ..serving.engines.openai_http import OpenAIHttpEngine

        options.setdefault("backoff", 0.01)
        options.setdefault("task_models", (SMOLLM2_MODEL,))
        return OpenAIHttpEngine(self.base_url, options.pop("model", self.model), **options)

    # -- the app ------------------------------------------------------------------------------------------------

    def _authorized(self, request: Request) -> bool:
        return self.api_key is None or request.headers.get("authorization") == f"Bearer {self.api_key}"

    def _build_app(self) -> FastAPI:
        app = FastAPI(title="OpenAI-compatible stand-in")

        @app.get("/health")
        async def health() -> dict:
            return {}

        @app.get("/v1/models")
        async def models(request: Request):
            if not self._authorized(request):
                return JSONResponse({"error": "Unauthorized"}, 401)
            card = {"id": self.model, "object": "model", "created": int(time.time()), "owned_by": "atoma-ops"}
            if self.engine.max_context:
                card["max_model_len"] = self.engine.max_context
            return {"object": "list", "data": [card]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            return await self._chat(request)

        if self.tokenize:

            @app.post("/tokenize")
            async def tokenize(request: Request):
                if not self._authorized(request):
                    return JSONResponse({"error": "Unauthorized"}, 401)
                try:
                    body = await request.json()
                except ValueError:
                    return openai_error(400, "the body is not JSON")
                if not isinstance(body, dict):
                    return openai_error(400, "the body must be a JSON object")
                if body.get("model") not in (None, self.model):
                    return openai_error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
                try:
                    if "messages" in body:
                        count = await asyncio.to_thread(self.engine.prompt_tokens, {"messages": body["messages"]})
                    elif isinstance(body.get("prompt"), str):
                        count = await asyncio.to_thread(self.engine.count_tokens, body["prompt"])
                    else:
                        return openai_error(400, "tokenize needs 'prompt' (a string) or 'messages'")
                except EngineError as exc:
                    return openai_error(400, str(exc))
                return {"count": count, "max_model_len": self.engine.max_context}

        return app

    def _sampling(self, body: dict, prompt_tokens: int | None) -> Sampling:
        """The decoding settings of an OpenAI body with OpenAI's defaults (temperature 1, unseeded: random)."""

        def number(key: str, default: float) -> float:
            value = body.get(key)
            if value is None:
                return default
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _Refused(openai_error(400, f"'{key}' must be a number", param=key))
            return float(value)

        limit = self.engine.max_context
        if limit and prompt_tokens is not None and prompt_tokens >= limit:
            raise _Refused(openai_error(
                400, f"This model's maximum context length is {limit} tokens. However, your prompt contains "
                f"{prompt_tokens} input tokens", param="input_tokens",
            ))
        budget = body.get("max_completion_tokens", body.get("max_tokens"))
        if budget is None:
            budget = (limit - (prompt_tokens or 0)) if limit else 8192
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise _Refused(openai_error(400, f"max_tokens must be at least 1, got {budget!r}", param="max_tokens"))
        if limit and budget > limit:
            raise _Refused(openai_error(
                400, f"max_tokens={budget} cannot be greater than max_model_len={limit}", param="max_tokens"
            ))
        stop = body.get("stop")
        stops = [stop] if isinstance(stop, str) else (stop or [])
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _Refused(openai_error(400, "'stop' must be a string or a list of strings", param="stop"))
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise _Refused(openai_error(400, "'seed' must be an integer", param="seed"))
        temperature = number("temperature", 1.0)
        try:
            return Sampling(
                max_tokens=budget,
                temperature=temperature,
                top_p=number("top_p", 1.0),
                seed=(seed if seed is not None else secrets.randbits(63)) if temperature > 0 else None,
                stop=tuple(s for s in stops if s),
            )
        except ValueError as exc:
            raise _Refused(openai_error(400, str(exc))) from None

    async def _chat(self, request: Request):
        if not self._authorized(request):
            return JSONResponse({"error": "Unauthorized"}, 401)
        self.requests += 1
        if request.client is not None:
            self.peers.add((request.client.host, request.client.port))
        try:
            body = await request.json()
        except ValueError:
            return openai_error(400, "the body is not JSON")
        self.bodies.append(body)
        fault = self.faults.popleft() if self.faults else None
        if isinstance(fault, int):
            return openai_error(fault, f"injected fault {fault}", "InternalServerError" if fault >= 500 else "Error")
        if not isinstance(body, dict):
            return openai_error(400, "the body must be a JSON object")
        if body.get("model") != self.model:
            return openai_error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        if body.get("n") not in (None, 1):
            return openai_error(400, "only n=1 is supported", param="n")
        options = body.get("stream_options") or {}
        if self.reject_continuous_usage and "continuous_usage_stats" in options:
            return openai_error(
                400, "Unrecognized request argument supplied: stream_options.continuous_usage_stats",
                param="stream_options",
            )
        try:
            prompt = self.engine.prompt_tokens(body)  # a chat template: quick enough for the loop
            sampling = self._sampling(body, prompt)
        except _Refused as refused:
            return refused.response
        except EngineError as exc:
            return openai_error(400, str(exc))
        request_body = {"messages": body["messages"]}
        deltas = self.engine.stream(request_body, sampling)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if body.get("stream") and not self.ignore_stream:
            return self._streamed(body, deltas, fault, options)
        try:
            gen = Generation()
            async with aclosing(deltas):
                async for delta in deltas:
                    gen.add(delta)
                    self.completion_tokens += delta.tokens
            answer = gen.completion(self.model)
            if fault in ("no-usage",):
                answer.pop("usage")
            elif fault == "bad-usage":
                answer["usage"]["completion_tokens"] = "many"
            self.completed += 1
            return answer
        except EngineError as exc:
            return openai_error(400, str(exc))
        finally:
            self.in_flight -= 1

    def _streamed(self, body: dict, deltas: AsyncIterator[Delta], fault: Any, options: dict) -> StreamingResponse:
        include_usage = bool(options.get("include_usage")) and fault != "no-usage"
        continuous = (
            self.continuous_usage and bool(options.get("continuous_usage_stats")) and fault != "no-usage"
        )
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(choices: list, usage: dict | None = None) -> dict:
            out = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": self.model,
                   "choices": choices}
            if usage is not None:
                out["usage"] = usage
            return out

        def usage_of(prompt: int, completion_tokens: Any) -> dict:
            total = prompt + completion_tokens if isinstance(completion_tokens, int) else prompt
            return {"prompt_tokens": prompt, "completion_tokens": completion_tokens, "total_tokens": total}

        async def events() -> AsyncIterator[bytes]:
            finished = False
            prompt, produced, sent = 0, 0, 0
            try:
                async with aclosing(deltas):
                    try:
                        async for delta in deltas:
                            if delta.prompt_tokens is not None:
                                prompt = delta.prompt_tokens
                            produced += delta.tokens
                            self.completion_tokens += delta.tokens
                            running = usage_of(prompt, produced) if continuous else None
                            if sent == 0:
                                role = {"index": 0, "delta": {"role": "assistant", "content": ""},
                                        "logprobs": None, "finish_reason": None}
                                yield _sse(chunk([role], usage_of(prompt, 0) if continuous else None))
                            finish = delta.finish_reason
                            if fault == "no-finish":
                                finish = None
                            choice = {"index": 0, "delta": {"content": delta.text}, "logprobs": None,
                                      "finish_reason": finish}
                            yield _sse(chunk([choice], running))
                            sent += 1
                            if fault == "drop" and sent == 2:
                                raise ConnectionAbortedError("injected fault: connection dropped")
                            if fault == "error-chunk" and sent == 2:
                                yield _sse({"error": {"message": "injected fault: the engine failed mid-stream",
                                                      "type": "InternalServerError", "code": 500}})
                                finished = True
                                return
                    except EngineError as exc:
                        yield _sse({"error": {"message": str(exc), "type": "BadRequestError", "code": 400}})
                        finished = True
                        return
                if include_usage:
                    final = usage_of(prompt, produced)
                    if fault == "bad-usage":
                        final = usage_of(prompt, "many")
                    elif fault == "short-usage":
                        final = usage_of(prompt, max(0, produced - 2))
                    yield _sse(chunk([], final))
                yield b"data: [DONE]\n\n"
                finished = True
                self.completed += 1
            finally:
                self.in_flight -= 1
                if not finished and fault != "drop":
                    self.disconnects += 1

        return StreamingResponse(events(), media_type="text/event-stream")


def standin(
    *,
    latency: float = 0.0,
    token_delay: float = 0.0,
    model: str = STANDIN_MODEL,
    max_context: int = 8192,
    answer_words: tuple[int, int] = (8, 24),
    **server_options: Any,
) -> OpenAIServer:
    """An :class:`OpenAIServer` in front of a :class:`StandinEngine` (not started: use it as a context manager)."""
    engine = StandinEngine(
        model, latency=latency, token_delay=token_delay, max_context=max_context, answer_words=answer_words
    )
    return OpenAIServer(engine, **server_options)


#: the stand-in's chat template in jinja (string contents): the words StandinEngine.render gives
_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
             "<|im_start|>assistant")


def save_tokenizer(folder: str | Path) -> Path:
    """The stand-in's tokenizer (a token is a whitespace-separated word) and chat template, saved as a transformers
    folder: what ``node serve --tokenizer`` loads for the model it serves. Counts agree with the stand-in's
    ``/tokenize`` for string contents."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    tokenizer.chat_template = _TEMPLATE
    folder = Path(folder)
    tokenizer.save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> None:
    """Run the stand-in in the foreground on 127.0.0.1 (Ctrl-C stops it)."""
    parser = argparse.ArgumentParser(prog="python -m atoma_ops.testing.openai_standin", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one, printed)")
    parser.add_argument("--latency", type=float, default=0.5, help="seconds before the first token of each request")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between two tokens")
    parser.add_argument("--model", default=STANDIN_MODEL)
    parser.add_argument("--max-context", type=int, default=8192)
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args(argv)
    import uvicorn

    server = standin(latency=args.latency, token_delay=args.token_delay, model=args.model,
                     max_context=args.max_context, api_key=args.api_key)
    sock = free_socket("127.0.0.1", args.port)
    print(f"OpenAI-compatible stand-in serving {args.model!r} on http://127.0.0.1:{sock.getsockname()[1]}/v1 "
          f"(latency {args.latency} s, token delay {args.token_delay} s)", flush=True)
    uvicorn.Server(uvicorn.Config(server.app, log_level="warning", lifespan="off", backlog=4096)).run(sockets=[sock])


if __name__ == "__main__":
    main()
