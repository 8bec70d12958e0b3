"""Inference engines: ``cpu`` (SmolLM2 on CPU torch, the default), ``openai`` (any OpenAI-compatible server, e.g.
``vllm serve``: each request streamed over SSE) and ``vllm`` (vLLM's async engine in process, its own environment).
Every engine serves one request per ``stream(request, sampling)`` call, any number at once. See docs/engines.md.

Importing this package imports no engine: each is loaded by :func:`make_engine` when asked for.
"""

from __future__ import annotations

from typing import Any

from .base import SMOLLM2_MODEL, Engine, EngineError, completion

ENGINE_KINDS = ("cpu", "openai", "vllm")

__all__ = ["ENGINE_KINDS", "SMOLLM2_MODEL", "Engine", "EngineError", "completion", "make_engine"]


def make_engine(kind: str, **options: Any) -> Engine:
    """Build an engine by kind.

    - ``cpu``: ``CpuEngine(gguf_path=None, model=..., threads=None, max_batch=32, prefix_cache=True)``;
    - ``openai``: ``OpenAIHttpEngine(base_url, model, api_key=None, timeout=120.0, max_concurrency=256,
      tokenizer=None, retries=2, backoff=0.2)``;
    - ``vllm``: ``VllmEngine(model, **engine_kwargs)`` (``AsyncEngineArgs`` fields; raises EngineError where vLLM is
      not installed).
    """
    if kind == "cpu":
        from .cpu import CpuEngine

        return CpuEngine(**options)
    if kind == "openai":
        from .openai_http import OpenAIHttpEngine

        return OpenAIHttpEngine(**options)
    if kind == "vllm":
        from .vllm import VllmEngine

        return VllmEngine(**options)
    raise ValueError(f"unknown engine kind {kind!r}: choose one of {', '.join(ENGINE_KINDS)}")
