"""The CPU engine's batching: completion tokens/s one request at a time vs 8 and 16 concurrent, side by side.

    .venv/bin/python bench/cpu_engine.py                      # 16 requests of the sample workload, 48 tokens each
    .venv/bin/python bench/cpu_engine.py --requests 8 --max-tokens 32 --rounds 1 --threads 1 --no-hf

The same requests (the first ``--requests`` of ``data/workloads/sample.jsonl``, greedy, ``max_tokens`` set to
``--max-tokens``) are run through ``CpuEngine.stream`` in one process:

- **1 at a time**: each request alone, one after another (what the engine did before batching, and what an
  attestation replay does);
- **C concurrent** (``--concurrency``, default 8 and 16): C streams in flight at once, a new one starting as one
  ends, on one event loop.

The modes alternate order from one round to the next (this machine is shared: its speed drifts). Printed per mode:
completion tokens, wall seconds, tokens/s and the ratio to one-at-a-time; every mode must produce the very same
texts (greedy output is batch-invariant: a difference is printed as a failure). Goal: >= 4x at 8 concurrent. With
``--hf`` (default) it also loads the model a second time as transformers' ``AutoModelForCausalLM`` and times
``generate`` one request at a time on the first requests: the old engine's rate, for reference. Nothing is asserted.
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
    lines = [json.loads(line) for line in WORKLOAD.read_text().splitlines() if line.strip()]
    return [{"messages": r["messages"]} for r in lines[:count]]


async def one(engine, request: dict, sampling: Sampling) -> Generation:
    gen = Generation()
    async for delta in engine.stream(request, sampling):
        gen.add(delta)
    return gen


async def concurrent(engine, requests: list[dict], sampling: Sampling, width: int) -> list[Generation]:
    gate = asyncio.Semaphore(width)

    async def gated(request: dict) -> Generation:
        async with gate:
            return await one(engine, request, sampling)

    return list(await asyncio.gather(*(gated(r) for r in requests)))


def run_mode(engine, requests: list[dict], sampling: Sampling, width: int) -> tuple[float, list[Generation]]:
    start = time.perf_counter()
    if width == 1:
        gens = [asyncio.run(one(engine, r, sampling)) for r in requests]
    else:
        gens = asyncio.run(concurrent(engine, requests, sampling, width))
    return time.perf_counter() - start, gens


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
    args = ap.parse_args()

    from atoma_ops.serving.engines.cpu import CpuEngine

    import torch

    started = time.perf_counter()
    engine = CpuEngine(threads=args.threads, max_batch=args.max_batch)
    print(f"CPU engine loaded in {time.perf_counter() - started:.1f} s: batching mode {engine.batch_mode!r}, "
          f"{torch.get_num_threads()} torch threads, max_batch {args.max_batch}")
    requests = load_requests(args.requests)
    sampling = Sampling(max_tokens=args.max_tokens)
    widths = [1] + [int(c) for c in args.concurrency.split(",")]
    asyncio.run(one(engine, requests[0], Sampling(max_tokens=2)))  # warm up (first-use allocations)

    times: dict[int, list[float]] = {w: [] for w in widths}
    tokens: dict[int, int] = {}
    reference: list[str] | None = None
    mismatches: list[str] = []
    for round_ in range(args.rounds):
        for width in widths if round_ % 2 == 0 else widths[::-1]:
            elapsed, gens = run_mode(engine, requests, sampling, width)
            texts = [g.content for g in gens]
            tokens[width] = sum(g.completion_tokens for g in gens)
            times[width].append(elapsed)
            print(f"  round {round_ + 1}: {width:>2} at a time: {tokens[width]} tokens in {elapsed:6.1f} s "
                  f"= {tokens[width] / elapsed:6.1f} tok/s", flush=True)
            if reference is None:
                reference = texts
            elif texts != reference:
                mismatches.append(f"{width} at a time, round {round_ + 1}: "
                                  f"{sum(a != b for a, b in zip(texts, reference))} texts differ")

    hf = hf_generate_rate(engine, requests[: args.hf_requests], args.max_tokens) if args.hf else None

    print()
    print(f"{len(requests)} requests (sample workload), greedy, max_tokens {args.max_tokens}; "
          f"median of {args.rounds} round(s)")
    base = tokens[1] / statistics.median(times[1])
    print(f"{'mode':<20}{'tokens':>8}{'seconds':>10}{'tok/s':>10}{'vs 1 at a time':>16}")
    for width in widths:
        seconds = statistics.median(times[width])
        rate = tokens[width] / seconds
        print(f"{(f'{width} concurrent' if width > 1 else '1 at a time'):<20}{tokens[width]:>8}{seconds:>10.1f}"
              f"{rate:>10.1f}{rate / base:>15.2f}x")
    if hf is not None:
        hf_tokens, hf_seconds = hf
        print(f"{'HF generate (old)':<20}{hf_tokens:>8}{hf_seconds:>10.1f}{hf_tokens / hf_seconds:>10.1f}"
              f"{hf_tokens / hf_seconds / base:>15.2f}x   (first {args.hf_requests} requests, one at a time)")
    if 8 in times:
        ratio = tokens[8] / statistics.median(times[8]) / base
        verdict = "met" if ratio >= GOAL else "MISSED"
        print(f"goal: 8 concurrent >= {GOAL:.0f}x one at a time: {ratio:.2f}x -> {verdict}")
        if hf is not None:
            print(f"      8 concurrent vs the old HF generate rate: {ratio * base / (hf[0] / hf[1]):.2f}x")
    print("same texts in every mode: " + ("yes" if not mismatches else "NO: " + "; ".join(mismatches)))


if __name__ == "__main__":
    main()
