"""atoma-ops: run the Atoma Network stack lifecycle as retryable, idempotent steps.

The core library (this package) never imports Prefect; the orchestration lives in ``blocks/``, ``tasks/`` and
``flows/`` beside it.
"""

__version__ = "0.1.0"
