"""``InferenceEngine``: what serves and replays stacks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from prefect.blocks.core import Block
from pydantic import Field

if TYPE_CHECKING:  # pragma: no cover
    from atoma_ops.serving.engines.base import Engine


class InferenceEngine(Block):
    """The inference engine of a node: the embedded CPU default, an OpenAI-compatible server, or vLLM in process.

    Attestation must replay with the same model and decoding settings as the serving node, so one block is usually
    shared by both.
    """

    _block_type_name = "Inference Engine"
    _description = "The engine that serves and replays Atoma stacks (cpu | openai | vllm)."

    kind: Literal["cpu", "openai", "vllm"] = Field(
        default="cpu", description="`cpu`: SmolLM2 on CPU, offline; `openai`: an HTTP server; `vllm`: in process."
    )
    model: str | None = Field(default=None, description="Model name (HuggingFace style); default SmolLM2-135M-Instruct.")
    base_url: str | None = Field(default=None, description="`openai` kind: the server's base URL, e.g. http://127.0.0.1:8000.")
    # The name predates per-request serving; kept so saved blocks still load. Serving has no batches any more: it
    # is how many requests of a workload are in progress at once on the engine (a serve-stack task serves a window of
    # 4 × this); a replay still runs its history this many requests at a time.
    batch_size: int = Field(
        default=8, ge=1, le=256,
        description="Serving concurrency: requests of a workload in progress at once on the engine (also the replay batch).",
    )

    def cache_key(self) -> tuple:
        return (self.kind, self.model, self.base_url)

    def build(self) -> "Engine":
        """Load the engine (the CPU engine takes 15–20 s: callers keep it for the process)."""
        from atoma_ops.serving.node import load_engine

        return load_engine(self.kind, model=self.model, base_url=self.base_url)
