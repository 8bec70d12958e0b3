"""One Prefect flow per lifecycle stage, plus the composite lifecycle and scheduled runs.

Empty until the orchestration work; `make demo` runs the CLI walkthrough in `scripts/demo_cli.py` meanwhile.
"""
