"""Prefect Blocks: configuration and factories for the core's clients (network, wallet, engine, ledger).

Empty until the orchestration work; the core library (``atoma_ops``) works without Prefect.
"""
