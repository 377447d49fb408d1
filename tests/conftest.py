"""Shared fixtures: every test gets its own empty data root, and a CLI runner that never swallows exceptions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point TSR_HOME at a fresh folder so no test touches ./tsr-data."""
    root = tmp_path / "tsr-data"
    monkeypatch.setenv("TSR_HOME", str(root))
    monkeypatch.delenv("TSR_CRASH_AT", raising=False)
    return root


@pytest.fixture
def tsr(data_root: Path):
    """Run `tsr ARGS...` in-process; returns click's Result (exit_code, output)."""
    from builder.cli import cli

    def run(*args: str, expect: int | None = 0):
        result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
        if expect is not None:
            assert result.exit_code == expect, result.output
        return result

    return run


def tsr_env(data_root: Path, **extra: str) -> dict[str, str]:
    """Environment for running the real `tsr` console script in a subprocess."""
    env = dict(os.environ, TSR_HOME=str(data_root), PYTHONUNBUFFERED="1")
    env.update(extra)
    return env
