"""`fileshare daemon` as a real process: the control API, the CLI through it, the gateway."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from fileshare.content.cid import CID
from fileshare.content.reader import child_cids
from fileshare.daemon.car import decode_car

from ..procutil import FILESHARE, ROOT, Lines, stop_process

LOOPBACK = "/ip4/127.0.0.1/tcp/0"


def _env(tmp: Path) -> dict[str, str]:
    # no user config file; unbuffered output so lines arrive as printed
    return {**os.environ, "PYTHONUNBUFFERED": "1", "XDG_CONFIG_HOME": str(tmp / "xdg")}


class Daemon:
    def __init__(self, tmp: Path, repo: Path, *args: str) -> None:
        self.repo = repo
        self.env = _env(tmp)
        self.proc = subprocess.Popen(
            [*FILESHARE, "--repo", str(repo), "daemon", "--listen", LOOPBACK, "--no-mdns", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=self.env,
        )
        lines = Lines(self.proc)
        self.addr = lines.read()
        api = lines.read()
        gateway = lines.read()
        assert api.startswith("api http://127.0.0.1:"), api
        assert gateway.startswith("gateway http://127.0.0.1:"), gateway
        self.api = api.split()[1]
        self.gateway = gateway.split()[1]
        self.token = (repo / "api.token").read_text().strip()

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*FILESHARE, "--repo", str(self.repo), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            env=self.env,
        )

    def api_get(self, path: str, **params: str) -> httpx.Response:
        return httpx.get(
            f"{self.api}/api/v0{path}",
            params=params,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )

    def stop(self) -> tuple[int, str]:
        code, err = stop_process(self.proc, communicate=True, what="daemon")
        return code, err.decode(errors="replace")


def _ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, (res.returncode, res.stdout, res.stderr)
    return res.stdout


def test_cli_through_api_and_gateway(tmp_path: Path, daemons: list[Daemon]) -> None:
    a = Daemon(tmp_path, tmp_path / "a")
    daemons.append(a)
    token = a.repo / "api.token"
    assert token.stat().st_mode & 0o777 == 0o600
    info = json.loads((a.repo / "daemon.json").read_text())
    assert info["api"] == a.api and info["gateway"] == a.gateway

    # unauthenticated or wrong token: refused
    assert httpx.get(f"{a.api}/api/v0/status", timeout=10).status_code == 401
    bad = httpx.get(f"{a.api}/api/v0/id", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert bad.status_code == 401 and "error" in bad.json()
    assert a.api_get("/nosuch").status_code == 404

    src = tmp_path / "data.bin"
    data = os.urandom(1_300_000)
    src.write_bytes(data)
    cid = _ok(a.run("add", str(src), "--chunk-size", "256KiB")).strip()
    root = CID.parse(cid)
    status = json.loads(_ok(a.run("--json", "status")))
    assert status["running"] and status["api"] == a.api and status["gateway"] == a.gateway
    assert status["pins"] == 1 and status["pid"] == a.proc.pid
    shares = json.loads(_ok(a.run("--json", "ls")))["shares"]
    assert [s["cid"] for s in shares] == [cid]
    stat = json.loads(_ok(a.run("--json", "stat", cid)))
    assert stat["complete"] and stat["kind"] == "file" and stat["filesize"] == len(data)

    # gateway: plain file bytes, a range, the raw root block, and a CAR verified block by block
    plain = httpx.get(f"{a.gateway}/ipfs/{cid}", timeout=30)
    assert plain.status_code == 200 and plain.content == data
    assert plain.headers["content-length"] == str(len(data))
    part = httpx.get(f"{a.gateway}/ipfs/{cid}", headers={"Range": "bytes=300000-"}, timeout=30)
    assert part.status_code == 206 and part.content == data[300000:]
    raw = httpx.get(f"{a.gateway}/ipfs/{cid}?format=raw", timeout=30)
    assert raw.status_code == 200 and raw.headers["content-type"] == "application/vnd.ipld.raw"
    assert root.matches(raw.content)
    via_accept = httpx.get(
        f"{a.gateway}/ipfs/{cid}", headers={"Accept": "application/vnd.ipld.car"}, timeout=30
    )
    car = httpx.get(f"{a.gateway}/ipfs/{cid}?format=car", timeout=30)
    assert car.status_code == 200 and car.content == via_accept.content
    assert car.headers["content-type"].startswith("application/vnd.ipld.car; version=1")
    roots, blocks = decode_car(car.content)
    assert roots == [root] and blocks[0][0] == root
    seen = {c.multihash: b for c, b in blocks}
    for c, b in blocks:
        assert c.matches(b), c
    rebuilt = bytearray()
    stack = [root]
    while stack:  # every block reachable from the root is in the CAR
        c = stack.pop()
        block = seen[c.multihash]
        kids = child_cids(c, block)
        if not kids:
            rebuilt += block if c.codec == 0x55 else b""
        stack.extend(reversed(kids))
    assert bytes(rebuilt) == data
    missing = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
    assert httpx.get(f"{a.gateway}/ipfs/{missing}?format=raw", timeout=10).status_code == 404
    assert httpx.get(f"{a.gateway}/ipfs/nope?format=raw", timeout=10).status_code == 400
    unacceptable = httpx.get(
        f"{a.gateway}/ipfs/{cid}", headers={"Accept": "application/vnd.ipld.dag-json"}, timeout=10
    )
    assert unacceptable.status_code == 406
    assert httpx.post(f"{a.gateway}/ipfs/{cid}", timeout=10).status_code == 405

    # pin / unpin / gc through the daemon
    assert "unpinned" in _ok(a.run("unpin", cid))
    assert a.run("unpin", cid).returncode == 1
    gc = json.loads(_ok(a.run("--json", "gc")))
    assert gc["removed_blocks"] > 0
    assert httpx.get(f"{a.gateway}/ipfs/{cid}", timeout=10).status_code == 404
    gone = a.run("stat", cid)
    assert gone.returncode == 1 and "not in the local store" in gone.stderr
    assert _ok(a.run("add", str(src), "--chunk-size", "256KiB")).strip() == cid
    _ok(a.run("unpin", cid))
    assert "pinned" in _ok(a.run("pin", cid))
    assert json.loads(_ok(a.run("--json", "stat", cid)))["pinned"]

    code, err = a.stop()
    assert code == 0, err
    assert not (a.repo / "daemon.json").exists()
    # without a daemon the same commands run in process
    offline = json.loads(_ok(a.run("--json", "status")))
    assert offline["running"] is False and offline["pins"] == 1
    assert _ok(a.run("verify")).strip().endswith("blocks ok")


def test_share_and_fetch_between_daemons(tmp_path: Path, daemons: list[Daemon]) -> None:
    a = Daemon(tmp_path, tmp_path / "a")
    daemons.append(a)
    b = Daemon(tmp_path, tmp_path / "b", "--peer", a.addr)
    daemons.append(b)
    src = tmp_path / "shared.bin"
    data = os.urandom(2_000_000)
    src.write_bytes(data)
    out = _ok(a.run("share", str(src))).split()
    cid = out[0]
    assert a.addr in out[1:]  # share handed the file to the daemon and printed its addresses
    pins = json.loads(_ok(a.run("--json", "ls")))["shares"]
    assert pins[0]["shared"] is True

    dest = tmp_path / "got.bin"
    res = b.run("--json", "fetch", cid, "--peer", a.addr, "-o", str(dest))
    done = json.loads(_ok(res).splitlines()[-1])
    assert done["path"] == str(dest) and done["network"] is True
    assert dest.read_bytes() == data
    peers = b.api_get("/peers").json()["peers"]
    assert any(p["peer_id"] in a.addr for p in peers)
    # `fileshare peers` shows the daemon's live connections
    listed = [json.loads(line) for line in _ok(b.run("--json", "peers")).splitlines()]
    assert any(row["peer_id"] in a.addr for row in listed)
    assert b.stop()[0] == 0
    assert a.stop()[0] == 0
    _ok(b.run("verify"))


@pytest.mark.slow
def test_sigterm_during_fetch_leaves_store_verified(tmp_path: Path, daemons: list[Daemon]) -> None:
    a = Daemon(tmp_path, tmp_path / "a", "--max-rate", "1MiB")  # slow sender: time to interrupt
    daemons.append(a)
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(12 * 1024 * 1024))
    cid = _ok(a.run("share", str(src))).split()[0]
    b = Daemon(tmp_path, tmp_path / "b")
    daemons.append(b)
    dest = tmp_path / "big.out"
    fetch = subprocess.Popen(
        [*FILESHARE, "--repo", str(b.repo), "fetch", cid, "--peer", a.addr, "-o", str(dest)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=b.env,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until some blocks have arrived
        if b.api_get("/status").json()["store_blocks"] >= 3:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("no blocks arrived")
    code, err = b.stop()
    assert code == 0, err
    _out, ferr = fetch.communicate(timeout=30)
    assert fetch.returncode == 1 and "daemon" in ferr, ferr
    assert not dest.exists()
    assert not list(tmp_path.glob(".big.out.*.part"))
    verified = b.run("verify")
    assert verified.returncode == 0, verified.stderr
    assert a.stop()[0] == 0


def test_config_file_then_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cli.config import ConfigError, load_config

    conf = tmp_path / "config.toml"
    conf.write_text(
        'repo = "~/fs-repo"\nlisten = ["/ip4/127.0.0.1/tcp/0"]\ngateway = "127.0.0.1:8080"\n'
        'mdns = false\n[limits]\nmax_rate = "1MiB"\nstall_timeout = 5\n'
    )
    monkeypatch.setenv("FILESHARE_CONFIG", str(conf))
    monkeypatch.setenv("FILESHARE_GATEWAY", "off")
    load_config.cache_clear()
    config = load_config()
    assert config.repo == Path("~/fs-repo").expanduser() and config.mdns is False
    assert config.listen == ("/ip4/127.0.0.1/tcp/0",) and config.max_rate == "1MiB"
    assert config.gateway == "off" and config.stall_timeout == 5.0
    conf.write_text('lisen = ["typo"]\n')
    load_config.cache_clear()
    with pytest.raises(ConfigError, match="unknown setting"):
        load_config()
    load_config.cache_clear()

    # a daemon configured by the file: no gateway, a fixed API host
    conf.write_text('gateway = "off"\napi = "127.0.0.1:0"\n')
    env = {**_env(tmp_path), "FILESHARE_CONFIG": str(conf)}
    env.pop("FILESHARE_GATEWAY", None)
    proc = subprocess.Popen(
        [
            *FILESHARE,
            "--repo",
            str(tmp_path / "r"),
            "--json",
            "daemon",
            "--listen",
            LOOPBACK,
            "--no-mdns",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )
    try:
        lines = Lines(proc)
        assert "addr" in json.loads(lines.read())
        api = json.loads(lines.read())["api"]
        token = (tmp_path / "r" / "api.token").read_text().strip()
        status = httpx.get(
            f"{api}/api/v0/status", headers={"Authorization": f"Bearer {token}"}, timeout=10
        ).json()
        assert status["gateway"] is None and status["api"] == api
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
