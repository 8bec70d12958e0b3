"""Stack commitment over 1M request leaves beside hashing the same 1M leaves alone.

Usage: ``.venv/bin/python bench/commitment.py`` (1M leaves), or with options:

    .venv/bin/python bench/commitment.py [--leaves 1000000] [--rounds 3] [--extra 1] [--profile]

What it measures, side by side in one process (design.md "Commitments", ``atoma_ops.protocol.commitments``):

1. **leaf hashing** — the baseline: ``request_leaf(payload_hash, response_hash)`` for N pairs of 32-byte hashes,
   i.e. one blake2b-256 of 64 bytes per leaf (what a node does once per served request);
2. **commitment** — ``commit(leaves, extra)`` over those N leaves: ``merkle_root`` (N − 1 blake2b of 64 bytes, the
   unpaired last node of a level promoted) plus ``leaf_0 … leaf_k`` and ``committed_stack_proof`` (k + 2 hashes).

The two alternate for ``--rounds`` rounds (with the garbage collector off while timing) and the medians are compared.
Goal: ``(leaf hashing + commitment) / leaf hashing <= 1.3`` — "the commitment over 1M leaves vs hashing the same 1M
leaves alone", the commitment being the extra work on top of the leaves. The other reading,
``commitment / leaf hashing``, is printed too. When the goal is missed, or with ``--profile``, it profiles
``merkle_root`` (cProfile, time per tree level, cost of one blake2b call) and prints what would close the gap.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import io
import math
import pstats
import random
import statistics
import sys
import time
import timeit
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atoma_ops.protocol.commitments import commit, leaves_of, merkle_root, request_leaf  # noqa: E402

GOAL = 1.3


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        result = fn()
        return time.perf_counter() - start, result
    finally:
        gc.enable()


def make_pairs(n: int, seed: int) -> list[tuple[bytes, bytes]]:
    """N (payload hash, response hash) pairs: deterministic 32-byte strings (their content does not matter)."""
    buf = random.Random(seed).randbytes(64 * n)
    return [(buf[i : i + 32], buf[i + 32 : i + 64]) for i in range(0, 64 * n, 64)]


def mib(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f} MiB"


def internal_hashes(n: int) -> int:
    """Hash calls of ``merkle_root``: every hash turns two nodes into one, promotion costs nothing ⇒ n − 1."""
    return max(n - 1, 0)


def levels(n: int) -> int:
    return math.ceil(math.log2(n)) if n > 1 else 0


def sample_exchange(i: int) -> tuple[dict, dict]:
    """A realistic (request, response) pair, to put the per-leaf cost in the context of serving."""
    request = {
        "model": "meta-llama/Llama-3.3-70B-Instruct",
        "messages": [{"role": "system", "content": "You are a helpful assistant."},
                     {"role": "user", "content": f"Question number {i}: what is {i} + {i}?"}],
        "max_tokens": 256,
        "temperature": 0.7,
    }
    response = {
        "id": f"chatcmpl-{i}", "object": "chat.completion", "created": 1_700_000_000 + i,
        "model": "meta-llama/Llama-3.3-70B-Instruct", "system_fingerprint": "fp_x",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": f"{i} + {i} = {2 * i}."},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42},
    }
    return request, response


def profile_merkle_root(leaves: list[bytes], t_leaves: float, t_commit: float) -> None:
    n = len(leaves)
    print("\n--- profile of merkle_root ---")
    prof = cProfile.Profile()
    prof.enable()
    merkle_root(leaves)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(8)
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls")), 0)
    print("cProfile (inflated by profiling; the list comprehension's own time is the Python loop):")
    for ln in lines[start : start + 9]:
        print("  " + ln)

    # time per level, with the same loop as merkle_root
    print("time per tree level (same loop as merkle_root):")
    level, depth, per_level = list(leaves), 0, []
    blake2b = hashlib.blake2b
    while len(level) > 1:
        def step(level=level):
            nxt = [blake2b(level[i] + level[i + 1], digest_size=32).digest() for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                nxt.append(level[-1])
            return nxt
        t, nxt = timed(step)
        per_level.append((depth + 1, len(level), len(level) // 2, t))
        level, depth = nxt, depth + 1
    for d, width, hashes, t in per_level[:4]:
        print(f"  level {d:2d}: {width:>9,} nodes -> {hashes:>9,} hashes  {t * 1e3:8.1f} ms")
    rest = per_level[4:]
    if rest:
        print(f"  levels {rest[0][0]}-{rest[-1][0]}: {sum(r[2] for r in rest):>9,} hashes  "
              f"{sum(r[3] for r in rest) * 1e3:8.1f} ms")

    # what one hash costs, and where
    x = random.Random(1).randbytes(64)
    a, b = x[:32], x[32:]
    reps = 200_000
    call = min(timeit.repeat(lambda: blake2b(x, digest_size=32).digest(), number=reps, repeat=3)) / reps
    concat = min(timeit.repeat(lambda: a + b, number=reps, repeat=3)) / reps
    leaf_call = min(timeit.repeat(lambda: request_leaf(a, b), number=reps, repeat=3)) / reps
    big = random.Random(2).randbytes(32 * n)
    t_stream, _ = timed(lambda: blake2b(big, digest_size=32).digest())
    print("cost of one hash (µs; lambda call overhead included):")
    print(f"  blake2b(64 B, digest_size=32).digest(): {call * 1e6:.3f}   a + b (32 B each): {concat * 1e6:.3f}   "
          f"request_leaf(a, b): {leaf_call * 1e6:.3f}")
    print(f"  one blake2b over all {n:,} leaves concatenated ({mib(32 * n)}): {t_stream * 1e3:.1f} ms "
          f"= {t_stream / n * 1e9:.0f} ns per leaf of actual hashing work")
    print(f"  ⇒ per hash call ≈ {t_commit / max(internal_hashes(n), 1) * 1e6:.3f} µs in merkle_root vs "
          f"{t_leaves / n * 1e6:.3f} µs per leaf: the Python call overhead, not BLAKE2b, sets both")

    print("""
why the goal is missed / what would close it (suggestions; merkle_root is not changed here):
  - The ratio is structural. A binary tree needs N − 1 hashes of 64 bytes on top of the N leaf hashes of 64 bytes;
    each is one BLAKE2b compression (~0.15 µs) wrapped in ~0.2–0.3 µs of interpreter overhead (argument parsing for
    digest_size=, object creation, .digest()). (leaves + tree) / leaves therefore sits near 2 for any pure-Python
    binary tree over the same hash. Micro-tweaks were tried on the dev box (bench/README.md): zip over slices
    -3 %, copying a pre-built hasher ±0 %, a joined buffer sliced +23 %, memoryview slices +80 %: none near 1.3.
  - Build the tree incrementally while serving: keep the O(log N) "frontier" of completed subtree roots per stack
    and fold each new leaf in as it is stored (same root, same promotion rule). Settlement then costs O(log N)
    hashes and the per-request cost is ~1 extra hash call beside the request's JSON canonicalisation and two
    hashes (the context line above: ~12–15 µs per request), i.e. a few percent of leaf creation from real requests.
  - Do the tree loop in C (a tiny extension or cffi over libb2/OpenSSL's BLAKE2b-512 with a 32-byte output param):
    one compression ≈ 0.15 µs per internal node (the stream figure above × 128-byte block) ⇒ (leaves + tree) / leaves
    ≈ 1.2–1.3 with the leaves still hashed in Python (estimate, not measured).
  - A wider tree (4 children = one 128-byte BLAKE2b block per node ⇒ N/3 calls; 16 children ⇒ N/15) would meet
    1.3 in pure Python, but it changes the commitment every node and attester must compute (design.md
    "Commitments"): a protocol decision, not an optimisation.""")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--leaves", type=int, default=1_000_000, help="number of request leaves (default 1,000,000)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are compared (default 3)")
    ap.add_argument("--extra", type=int, default=1, help="cross_validation_extra_nodes_count k (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", action="store_true", help="always profile merkle_root (done anyway below the goal)")
    args = ap.parse_args(argv)
    n = args.leaves
    if n < 1:
        ap.error("--leaves must be at least 1")

    pairs = make_pairs(n, args.seed)
    print(f"leaves: {n:,}   k = {args.extra}   rounds: {args.rounds}   Python {sys.version.split()[0]}")
    print(f"sizes: input {n:,} pairs of 32-byte hashes = {mib(64 * n)}; leaves {mib(32 * n)}; "
          f"tree {levels(n)} levels, {internal_hashes(n):,} internal hashes; "
          f"+ {args.extra + 2} hashes for leaf_0..leaf_{args.extra} and the proof; "
          f"output 2 × 32 B (proof, leaf)")

    t_leaves, t_commit, t_inline = [], [], []
    c = leaves = None
    for _ in range(args.rounds):
        t, leaves = timed(lambda: [request_leaf(p, r) for p, r in pairs])
        t_leaves.append(t)
        t, c = timed(lambda: commit(leaves, args.extra))
        t_commit.append(t)
        blake2b = hashlib.blake2b
        t, inline = timed(lambda: [blake2b(p + r, digest_size=32).digest() for p, r in pairs])
        t_inline.append(t)
        assert inline == leaves
        del inline
    assert c is not None and leaves is not None and c.num_leaves == n

    leaf_s, commit_s, inline_s = (statistics.median(x) for x in (t_leaves, t_commit, t_inline))
    ratio_total = (leaf_s + commit_s) / leaf_s
    ratio_commit = commit_s / leaf_s

    def row(label: str, samples: list[float], med: float) -> None:
        print(f"  {label:<46} median {med:8.3f} s   min {min(samples):8.3f} s   "
              f"{med / n * 1e6:6.3f} µs per leaf")

    print("seconds:")
    row("leaf hashing (request_leaf × N)  [baseline]", t_leaves, leaf_s)
    row("commitment (commit: merkle_root + proof)", t_commit, commit_s)
    row("leaf hashing + commitment", [a + b for a, b in zip(t_leaves, t_commit)], leaf_s + commit_s)
    row("(ref) leaf hashing inlined, no wrapper calls", t_inline, inline_s)
    print(f"root {c.root.hex()[:16]}…  proof {c.committed_stack_proof.hex()[:16]}…")
    print("ratios (medians):")
    verdict = "meets" if ratio_total <= GOAL else "MISSES"
    print(f"  (leaf hashing + commitment) / leaf hashing alone = {ratio_total:.2f}×   "
          f"goal <= {GOAL}× : {verdict}   [the issue's meaning]")
    print(f"  commitment alone / leaf hashing alone          = {ratio_commit:.2f}×   "
          f"({'meets' if ratio_commit <= GOAL else 'misses'} {GOAL}× under this reading)")
    print(f"  commitment / inlined leaf hashing             = {commit_s / inline_s:.2f}×")

    # context: the cost of a leaf from a real (request, response) pair, canonical JSON included
    m = min(n, 20_000)
    sample = [sample_exchange(i) for i in range(m)]
    t_real, _ = timed(lambda: leaves_of(sample))
    per_real = t_real / m
    print(f"context: leaves_of on {m:,} realistic (request, response) dicts = {per_real * 1e6:.1f} µs per leaf "
          f"(canonical JSON + 3 hashes); the tree adds {commit_s / n * 1e6:.2f} µs per leaf "
          f"= {commit_s / n / per_real * 100:.0f} % of that")

    if ratio_total > GOAL or args.profile:
        profile_merkle_root(leaves, leaf_s, commit_s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
