"""Sync folders run by `fileshare daemon` (real processes on 127.0.0.1): `fileshare sync DIR` hands
the folder to the daemon, `sync list` shows it, `sync stop` stops it, a restarted daemon resumes it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from ..procutil import FILESHARE, ROOT, Lines, stop_process, wait_until

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    """`fileshare daemon` on a fixed loopback port (so a restart keeps its address)."""

    def __init__(self, tmp: Path, name: str) -> None:
        self.repo = tmp / f"repo_{name}"
        self.log = tmp / f"daemon_{name}.log"
        self.port = free_port()
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "XDG_CONFIG_HOME": str(tmp / "xdg")}
        self.start()

    def start(self) -> None:
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [*FILESHARE, "--repo", str(self.repo), "daemon", "--no-mdns",
                 "--listen", f"/ip4/127.0.0.1/tcp/{self.port}"],
                stdout=subprocess.PIPE, stderr=err, cwd=ROOT, env=self.env,
            )  # fmt: skip
        lines = Lines(self.proc)
        for _ in range(3):  # address, api, gateway
            lines.read()

    def stop(self) -> None:
        stop_process(self.proc, what="daemon")
        assert self.proc.stdout is not None
        self.proc.stdout.close()

    def cli(self, *args: str) -> Any:
        res = subprocess.run(
            [*FILESHARE, "--repo", str(self.repo), "--json", *args],
            capture_output=True, text=True, timeout=60, cwd=ROOT, env=self.env,
        )  # fmt: skip
        assert res.returncode == 0, (args, res.stdout, res.stderr, self.log.read_text())
        return json.loads(res.stdout.splitlines()[0])

    def folders(self) -> list[dict[str, Any]]:
        return list(self.cli("sync", "list")["folders"])


def has(path: Path, data: bytes) -> bool:
    try:
        return path.read_bytes() == data
    except OSError:
        return False


def test_daemon_runs_sync_folders(tmp_path: Path, daemons: list[Daemon]) -> None:
    a = Daemon(tmp_path, "a")
    daemons.append(a)
    b = Daemon(tmp_path, "b")
    daemons.append(b)
    dir_a, dir_b = tmp_path / "A", tmp_path / "B"

    # `sync DIR` returns at once: the daemon took the folder
    started = a.cli("sync", str(dir_a))
    assert started["event"] == "invite" and started["daemon"] == a.proc.pid
    invite, folder = started["invite"], started["folder"]
    assert invite.startswith("fsinvite1") and started["created"]
    joined = b.cli("sync", str(dir_b), "--join", invite)
    assert joined["folder"] == folder and joined["daemon"] == b.proc.pid

    (dir_a / "hello.txt").write_bytes(b"hello from A\n")
    wait_until(lambda: has(dir_b / "hello.txt", b"hello from A\n"), "hello.txt in B")

    for d, path in ((a, dir_a), (b, dir_b)):
        (row,) = d.folders()
        assert row["folder"] == folder and row["path"] == str(path.resolve())
        assert row["state"] == "running"
    assert a.folders()[0]["last_published"] is not None
    assert b.folders()[0]["stats"]["received"] >= 1
    # again on a running folder: the same invite, nothing restarted
    assert a.cli("sync", str(dir_a))["folder"] == folder

    # restart A: its folder resumes; a change made while it was down reaches B
    a.stop()
    (dir_a / "later.txt").write_bytes(b"written while the daemon was down\n")
    a.start()
    (row,) = a.folders()
    assert row["folder"] == folder
    wait_until(lambda: has(dir_b / "later.txt", b"written while the daemon was down\n"),
               "later.txt in B after A's restart")  # fmt: skip

    # stop on B (by folder id): a later change is no longer applied there
    stopped = b.cli("sync", "stop", folder)
    assert stopped["stopped"] and stopped["folder"] == folder
    assert b.folders() == []
    published = a.folders()[0]["stats"]["published"]
    (dir_a / "after-stop.txt").write_bytes(b"not for B\n")
    wait_until(lambda: a.folders()[0]["stats"]["published"] > published, "A to publish")
    time.sleep(2)
    assert not (dir_b / "after-stop.txt").exists()

    # stop on A by path; a restarted daemon does not resume a stopped folder
    assert a.cli("sync", "stop", str(dir_a))["folder"] == folder
    a.stop()
    a.start()
    assert a.folders() == []
