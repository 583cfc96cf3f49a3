"""`fileshare daemon`, `id` and `ping` as real processes on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

from fileshare.identity.keys import PrivateKey
from fileshare.identity.peerid import PeerId

from ..procutil import ENV, FILESHARE, ROOT, Lines, stop_process

LOOPBACK = "/ip4/127.0.0.1/tcp/0"


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FILESHARE, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=ENV
    )


class Daemon:
    def __init__(self, repo: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*FILESHARE, "--repo", str(repo), "daemon", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=ENV,
        )
        self.addr = Lines(self.proc).read()

    def stop(self) -> tuple[int, str]:
        code, err = stop_process(self.proc, communicate=True, what="daemon")
        return code, str(err)


def test_two_daemons_ping_and_id(tmp_path: Path, daemons: list[Daemon]) -> None:
    a = Daemon(tmp_path / "a", "--listen", LOOPBACK)
    daemons.append(a)
    assert a.addr.startswith("/ip4/127.0.0.1/tcp/") and "/p2p/12D3KooW" in a.addr
    b = Daemon(tmp_path / "b", "--debug", "--listen", LOOPBACK, "--peer", a.addr)
    daemons.append(b)

    ident = run("--repo", str(tmp_path / "a"), "id")
    assert ident.returncode == 0, ident.stderr
    lines = ident.stdout.split()
    assert lines[0] == a.addr.rsplit("/", 1)[1]
    assert a.addr in lines[1:]
    as_json = json.loads(run("--repo", str(tmp_path / "a"), "--json", "id").stdout)
    assert as_json["peer_id"] == lines[0] and a.addr in as_json["addresses"]
    assert as_json["public_key"]

    res = run("ping", a.addr, "--count", "3", "--interval", "0.05")
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("pong from") == 3
    res = run("--json", "ping", b.addr, "-n", "2", "--interval", "0")
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["seq"] for r in rows[:2]] == [1, 2]
    assert rows[-1]["count"] == 2 and rows[-1]["avg_ms"] > 0

    code, err = b.stop()
    assert code == 0, err
    assert "connected to" in err  # --peer was dialled at start
    assert a.stop()[0] == 0
    gone = run("--repo", str(tmp_path / "a"), "id")
    assert gone.stdout.split() == [lines[0]]  # no daemon, no addresses


def test_ping_errors(tmp_path: Path, daemons: list[Daemon]) -> None:
    a = Daemon(tmp_path / "a", "--json", "--listen", LOOPBACK)
    daemons.append(a)
    addr = json.loads(a.addr)["addr"]
    transport = addr.rsplit("/p2p/", 1)[0]
    wrong = PeerId.from_public_key(PrivateKey.generate().public_key())

    res = run("ping", f"{transport}/p2p/{wrong}", "-n", "1")
    assert res.returncode == 1
    assert res.stderr.startswith("error:") and str(wrong) in res.stderr
    assert "Traceback" not in res.stderr

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    res = run("ping", f"/ip4/127.0.0.1/tcp/{free}", "-n", "1")
    assert res.returncode == 1
    assert "error: cannot reach" in res.stderr and "Traceback" not in res.stderr

    res = run("ping", "/ip4/127.0.0.1/udp/1")
    assert res.returncode == 2  # usage error

    res = run("ping", transport, "-n", "1", "--interval", "0")  # no /p2p: any identity accepted
    assert res.returncode == 0, res.stderr
    assert a.stop()[0] == 0


def test_daemon_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        # exits on its own, well within the timeout (subprocess.TimeoutExpired fails the test)
        res = run(
            "--repo", str(tmp_path), "daemon", "--listen", f"/ip4/127.0.0.1/tcp/{port}", timeout=20
        )
    assert res.returncode == 1
    assert "already in use" in res.stderr and "Traceback" not in res.stderr
