"""Shared benchmark set-up: every benchmark runs on 2 threads (the machine's cores, as the issues
specify), and a summary that benchmark modules fill and pytest prints at the end."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def two_threads():
    original = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(original)

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
