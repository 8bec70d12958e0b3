"""Test doubles shipped apart from the product: stand-ins for the services a node talks to, for tests and
benchmarks. Product code never imports this package.

- :mod:`atoma_ops.testing.openai_standin`: an OpenAI-compatible HTTP server (FastAPI on 127.0.0.1) in front of any
  engine, and a deterministic stand-in engine with a fixed per-request latency and unlimited concurrency — a
  stand-in for ``vllm serve`` on a GPU.
"""
