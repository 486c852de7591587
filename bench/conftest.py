"""Shared benchmark helpers: a summary that benchmark modules fill and pytest prints at the end."""

from __future__ import annotations

import pytest

_SUMMARY: list[str] = []


@pytest.fixture(scope="session")
def bench_summary() -> list[str]:
    """Append lines (e.g. ratios against baselines measured in the same run) to print at the end."""
    return _SUMMARY


def pytest_terminal_summary(terminalreporter) -> None:
    if _SUMMARY:
        terminalreporter.section("benchmark summary")
        for line in _SUMMARY:
            terminalreporter.write_line(line)
