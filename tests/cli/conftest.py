"""Fixtures for the CLI tests (helpers in tests/cli/clikit.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


from tests.cli.clikit import Cli  # noqa: E402


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """An initialised localnet home (seed 1) with its aliases in ``cli.aliases``."""
    c = Cli(tmp_path / "home")
    init = c.ok("localnet", "init", "--seed", "1")
    c.aliases = init["aliases"]
    return c
