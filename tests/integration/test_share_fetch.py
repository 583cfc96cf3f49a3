"""`fileshare share` on one node, `fileshare fetch` on another: real processes on 127.0.0.1.

The helpers here (``start_share``, ``run_fetch``, ``Fetcher``) are shared with
test_fetch_faults.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from fileshare.content.blockstore import Blockstore
from fileshare.content.cid import CID, RAW

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_data"
LOOPBACK = "/ip4/127.0.0.1/tcp/0"
ENV = {k: v for k, v in os.environ.items() if k != "FILESHARE_REPO"} | {"PYTHONUNBUFFERED": "1"}
KIB = 1024
MIB = 1024 * KIB
WAIT = 60.0  # bound on every wait in these tests (seconds)

Json = dict[str, Any]


def write_random(path: Path, size: int, seed: int = 1) -> Path:
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def stored_blocks(repo: Path) -> int:
    return sum(1 for _ in Blockstore(repo / "blocks").iter_multihashes())


@dataclass
class Proc:
    """A child process with its stdout read line by line (stderr kept in a file)."""

    process: trio.Process
    stderr_path: Path
    _buffer: bytearray = field(default_factory=bytearray)

    async def line(self, timeout: float = WAIT) -> str | None:
        """The next stdout line, or None at EOF."""
        assert self.process.stdout is not None
        with trio.fail_after(timeout):
            while b"\n" not in self._buffer:
                data = await self.process.stdout.receive_some(65536)
                if not data:
                    if self._buffer:
                        last = bytes(self._buffer).decode()
                        self._buffer.clear()
                        return last
                    return None
                self._buffer += data
        raw, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer[:] = rest
        return raw.decode()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> int | None:
        if self.process.returncode is None:
            self.process.send_signal(sig)
            with trio.move_on_after(15):
                await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        return self.process.returncode


async def spawn(args: Sequence[str], stderr_path: Path) -> Proc:
    with stderr_path.open("wb") as err:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "fileshare", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=ROOT,
            env=ENV,
        )
    return Proc(process, stderr_path)


@dataclass
class Share(Proc):
    cid: str = ""
    addrs: list[str] = field(default_factory=list)

    @property
    def addr(self) -> str:
        return next(a for a in self.addrs if a.startswith("/ip4/127.0.0.1/"))


async def start_share(repo: Path, file: Path, *args: str) -> Share:
    """`fileshare share FILE --json` on 127.0.0.1; waits for its CID and address lines."""
    argv = ["--repo", str(repo), "--json", "share", str(file), "--listen", LOOPBACK, *args]
    proc = await spawn(argv, repo.parent / f"{repo.name}-share.stderr")
    share = Share(proc.process, proc.stderr_path)
    first = await share.line()
    assert first is not None, share.stderr()
    share.cid = json.loads(first)["cid"]
    while not share.addrs or len(share.addrs) < 1:
        line = await share.line()
        assert line is not None, share.stderr()
        share.addrs.append(json.loads(line)["addr"])
    return share


@dataclass
class FetchRun:
    returncode: int
    progress: list[Json]
    result: Json | None
    stderr: str


class Fetcher(Proc):
    """A running `fileshare --json fetch`; collects its progress lines."""

    progress: list[Json]

    async def lines(self) -> AsyncIterator[Json]:
        while (line := await self.line()) is not None:
            if line.strip():
                yield json.loads(line)


async def start_fetch(repo: Path, cid: str, out: Path, peers: Sequence[str], *args: str) -> Fetcher:
    argv = ["--repo", str(repo), "--json", "fetch", cid, "-o", str(out)]
    argv += [x for p in peers for x in ("--peer", p)] + list(args)
    proc = await spawn(argv, repo.parent / f"{repo.name}-fetch.stderr")
    return Fetcher(proc.process, proc.stderr_path)


async def finish_fetch(fetcher: Fetcher, timeout: float = WAIT) -> FetchRun:
    progress: list[Json] = []
    result: Json | None = None
    with trio.fail_after(timeout):
        async for doc in fetcher.lines():
            if doc.get("event") == "progress":
                progress.append(doc)
            else:
                result = doc
        await fetcher.process.wait()
    assert fetcher.process.returncode is not None
    return FetchRun(fetcher.process.returncode, progress, result, fetcher.stderr())


async def run_fetch(
    repo: Path, cid: str, out: Path, peers: Sequence[str], *args: str, timeout: float = WAIT
) -> FetchRun:
    return await finish_fetch(await start_fetch(repo, cid, out, peers, *args), timeout)


def check_ok(run: FetchRun, src: Path, out: Path) -> Json:
    assert run.returncode == 0, run.stderr
    assert run.result is not None
    assert out.read_bytes() == src.read_bytes()
    assert run.result["size"] == src.stat().st_size
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".part")]
    return run.result


# --- tests ---


@pytest.mark.parametrize(
    ("size", "share_args"),
    [
        (11, ()),  # one raw leaf: the root is the leaf
        (5 * MIB + 123, ()),  # blake3, 1 MiB raw leaves under one root
        (5 * MIB + 123, ("--hash", "sha2-256")),
        # multi-level DAGs: 1 KiB chunks, more leaves than one node links to
        (1200 * KIB + 7, ("--chunk-size", "1KiB")),  # 1024 links per node: two levels
        # CIDv0, dag-pb leaves, 174 links per node
        (
            400 * KIB + 3,
            ("--profile", "unixfs-v0-2015", "--chunk-size", "1KiB", "--hash", "sha2-256"),
        ),
        (400 * KIB + 3, ("--profile", "unixfs-v0-2015", "--chunk-size", "1KiB")),
    ],
    ids=["tiny", "b3-5MiB", "sha256-5MiB", "b3-2-levels", "sha256-v0-2-levels", "b3-v0-2-levels"],
)
async def test_share_then_fetch(tmp_path: Path, size: int, share_args: tuple[str, ...]) -> None:
    src = write_random(tmp_path / "src.bin", size, seed=size)
    share = await start_share(tmp_path / "a", src, *share_args)
    try:
        out = tmp_path / "out.bin"
        run = await run_fetch(tmp_path / "b", share.cid, out, [share.addr])
        result = check_ok(run, src, out)
        assert result["network"] and result["blocks_local"] == 0
        assert result["bad_blocks"] == 0 and result["duplicate_bytes"] == 0
        assert list(result["peers"]) == [share.addr.rsplit("/", 1)[1]]
        assert run.progress and run.progress[-1]["file_bytes_done"] == size
        assert run.progress[-1]["blocks_done"] == run.progress[-1]["blocks_known"]
        # the fetcher pinned what it fetched, and fetching again is local only
        again = await run_fetch(tmp_path / "b", share.cid, tmp_path / "again.bin", [])
        assert check_ok(again, src, tmp_path / "again.bin")["network"] is False
        assert (await share.stop()) == 0
    finally:
        await share.stop(signal.SIGKILL)


async def test_two_providers_share_the_work(tmp_path: Path) -> None:
    src = write_random(tmp_path / "src.bin", 24 * MIB)
    args = ("--chunk-size", "256KiB")
    a = await start_share(tmp_path / "a", src, *args)
    b = await start_share(tmp_path / "b", src, *args)
    try:
        assert a.cid == b.cid
        out = tmp_path / "out.bin"
        run = await run_fetch(tmp_path / "c", a.cid, out, [a.addr, b.addr])
        result = check_ok(run, src, out)
        per_peer = result["peers"]
        assert set(per_peer) == {a.addr.rsplit("/", 1)[1], b.addr.rsplit("/", 1)[1]}
        assert all(n > 0 for n in per_peer.values()), per_peer
        # outside the end game no block is asked from two peers; end-game copies depend on the
        # timing of two unthrottled providers on a loaded machine (bench/fetch.py measures them)
        assert result["duplicate_bytes"] == 0
        assert result["endgame_duplicate_bytes"] <= result["bytes_fetched"] // 4
    finally:
        await a.stop(signal.SIGKILL)
        await b.stop(signal.SIGKILL)


async def test_daemon_serves_its_repo_and_share_hands_off(tmp_path: Path) -> None:
    src = write_random(tmp_path / "src.bin", 3 * MIB)
    other = write_random(tmp_path / "other.bin", 2 * MIB, seed=7)
    repo = tmp_path / "a"
    added = subprocess.run(
        [sys.executable, "-m", "fileshare", "--repo", str(repo), "add", str(src)],
        capture_output=True, text=True, cwd=ROOT, env=ENV, check=True, timeout=WAIT,
    ).stdout.strip()  # fmt: skip
    daemon = await spawn(["--repo", str(repo), "daemon", "--listen", LOOPBACK], tmp_path / "d.err")
    try:
        addr = await daemon.line()
        assert addr is not None and "/p2p/" in addr, daemon.stderr()
        out = tmp_path / "out.bin"
        check_ok(await run_fetch(tmp_path / "b", added, out, [addr]), src, out)
        # `share` with a daemon on the repo imports, prints the CID and the daemon's addresses,
        # and returns: the daemon serves the new file
        with trio.fail_after(WAIT):
            shared = await trio.run_process(
                [sys.executable, "-m", "fileshare", "--repo", str(repo), "share", str(other)],
                capture_stdout=True, capture_stderr=True, cwd=ROOT, env=ENV,
            )  # fmt: skip
        lines = shared.stdout.decode().split()
        assert addr in lines[1:]
        out2 = tmp_path / "out2.bin"
        check_ok(await run_fetch(tmp_path / "b", lines[0], out2, [addr]), other, out2)
    finally:
        assert await daemon.stop() == 0, daemon.stderr()


async def test_fetch_errors(tmp_path: Path) -> None:
    src = write_random(tmp_path / "src.bin", 1 * MIB)
    share = await start_share(tmp_path / "a", src)
    try:
        # a CID nobody has: the provider answers DONT_HAVE, the fetch gives up after the stall
        # timeout with one line saying why
        missing = str(CID.from_data(RAW, b"nobody has this"))
        run = await run_fetch(
            tmp_path / "b", missing, tmp_path / "x", [share.addr], "--stall-timeout", "2"
        )
        assert run.returncode == 1 and "made no progress for 2 s" in run.stderr, run.stderr
        assert not (tmp_path / "x").exists()
        # an unreachable provider
        dead = share.addr.replace(share.addr.split("/")[4], "1")
        # (a fresh repo: "b" saved DHT peers above and would find the sharer through the DHT)
        run = await run_fetch(tmp_path / "c", share.cid, tmp_path / "x", [dead], "--debug")
        assert run.returncode == 1 and "no provider is reachable" in run.stderr, (dead, run)
    finally:
        await share.stop(signal.SIGKILL)


@pytest.mark.parametrize(
    ("content", "share_args"),
    [
        (b"", ()),  # the empty file: one empty raw block
        (
            b"0123456789abcdef" * 64 * 3000,
            ("--chunk-size", "1KiB"),
        ),  # one leaf CID linked 3000 times
        (b"x" * (2 * MIB) + b"tail", ()),  # two identical 1 MiB leaves and a short one
    ],
    ids=["empty", "repeated-leaf-2-levels", "repeated-1MiB-leaves"],
)
async def test_share_then_fetch_special_shapes(
    tmp_path: Path, content: bytes, share_args: tuple[str, ...]
) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(content)
    share = await start_share(tmp_path / "a", src, *share_args)
    try:
        out = tmp_path / "out.bin"
        result = check_ok(await run_fetch(tmp_path / "b", share.cid, out, [share.addr]), src, out)
        assert result["bad_blocks"] == 0
        assert out.read_bytes() == content
    finally:
        await share.stop(signal.SIGKILL)
