"""Thin Prefect tasks over the core library: one chain write or one batch of work each.

Empty until the orchestration work.
"""
