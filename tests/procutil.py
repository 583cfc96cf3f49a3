"""Helpers for tests that run `fileshare` as child processes."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FILESHARE = [sys.executable, "-m", "fileshare"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


class Lines:
    """Lines of a child's stdout, read from the raw pipe (no hidden buffering), with a deadline.

    ``stderr`` (optional) describes the child's stderr for failure messages; without it the
    failure message uses what ``communicate()`` returns.
    """

    def __init__(
        self, proc: subprocess.Popen[Any], stderr: Callable[[], str] | None = None
    ) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.fd = proc.stdout.fileno()
        self.buf = b""
        self._stderr = stderr

    def _describe(self) -> str:
        if self._stderr is not None:
            self.proc.wait()
            return self._stderr()
        return repr(self.proc.communicate()[1])

    def read(self, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            with selectors.DefaultSelector() as sel:
                sel.register(self.fd, selectors.EVENT_READ)
                if left <= 0 or not sel.select(left):
                    self.proc.kill()
                    raise AssertionError(f"no output in {timeout} s: {self._describe()}")
            chunk = os.read(self.fd, 65536)
            if not chunk:
                raise AssertionError(f"exited: {self.proc.wait()} {self._describe()}")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode().strip()


def wait_until(
    cond: Callable[[], bool],
    what: str | Callable[[], str],
    timeout: float = 30.0,
    interval: float = 0.05,
) -> None:
    """Poll ``cond`` until true; fail naming ``what`` (a string or a function making one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(interval)
    if cond():
        return
    text = what() if callable(what) else what
    raise AssertionError(f"timed out after {timeout} s waiting for {text}")


def stop_process(
    proc: subprocess.Popen[Any],
    timeout: float = 15,
    *,
    communicate: bool = False,
    must_stop: bool = True,
    what: str = "process",
) -> tuple[int, Any]:
    """SIGTERM, wait up to ``timeout``, then SIGKILL; returns (exit code, stderr or None).

    ``communicate`` reads the stdout/stderr pipes while waiting (use it when nobody else reads
    them). With ``must_stop`` a process that ignores SIGTERM fails the test after being killed.
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    err: Any = None
    try:
        if communicate:
            _, err = proc.communicate(timeout=timeout)
        else:
            proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        if communicate:
            proc.communicate()
        else:
            proc.wait()
        if must_stop:
            raise AssertionError(f"{what} did not stop on SIGTERM") from None
    return proc.returncode, err


def kill_process(proc: subprocess.Popen[Any], communicate: bool = True) -> None:
    """Cleanup after a test: kill ``proc`` if it still runs and reap it."""
    if proc.poll() is None:
        proc.kill()
        if communicate:
            proc.communicate()
        else:
            proc.wait()
