"""The code passes ruff (the dev extra's linter) with the rules pyproject.toml sets: pyflakes
(unused imports and variables, undefined names), pycodestyle's errors and the line length."""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    ruff = pytest.importorskip("ruff.__main__", reason="ruff is in the dev extra: pip install -e '.[dev]'")
    result = subprocess.run([ruff.find_ruff_bin(), "check", "--no-cache", "src", "tests", "benchmarks"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
