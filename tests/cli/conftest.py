"""Fixtures for the CLI tests (helpers in tests/cli/clikit.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from clikit import Cli  # noqa: E402


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """An initialised localnet home (seed 1) with its aliases in ``cli.aliases``."""
    c = Cli(tmp_path / "home")
    init = c.ok("localnet", "init", "--seed", "1")
    c.aliases = init["aliases"]
    return c
