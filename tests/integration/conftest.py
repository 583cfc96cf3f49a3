"""Shared fixtures for the integration tests."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any, Protocol

import pytest

from ..procutil import kill_process


class HasProc(Protocol):
    proc: subprocess.Popen[Any]


@pytest.fixture
def daemons() -> Iterator[list[HasProc]]:
    """Append every started daemon; any still running at the end is killed."""
    started: list[HasProc] = []
    yield started
    for d in started:
        kill_process(d.proc)
