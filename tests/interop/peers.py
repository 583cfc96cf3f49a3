"""Processes the interop harness starts on 127.0.0.1, and how we talk to them.

:func:`peer_launcher` starts js-libp2p (``js/peer.mjs``) or py-libp2p (``py_peer.py``) test peers:
each start waits (<= 30 s) for the peer's JSON ready line and returns a :class:`PeerProcess`;
``await peer.command("ping", addr=...)`` sends one JSON command and returns the reply.
:func:`daemon_launcher` does the same for ``fileshare daemon``, :func:`run_cli` runs one
``fileshare`` command. Every process is stopped, killed if needed, and reaped when its launcher
exits. Also here: the shared test payload (the same bytes the peers generate).
The pytest fixtures that wrap these live in conftest.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from array import array
from collections.abc import AsyncIterator, Generator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent

LOOPBACK_LISTEN = "/ip4/127.0.0.1/tcp/0"
ECHO_PROTOCOL = "/fileshare/echo/1.0.0"
MAX_WAIT = 30.0  # every wait in the harness is bounded by this (seconds)
STOP_TIMEOUT = 5.0
STDERR_TAIL = 20_000  # characters of a process's stderr attached to a failing test's report
CHILD_ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}

Json = dict[str, Any]


class PeerError(Exception):
    """A harness process failed to start, died, or answered a command with ok=false."""


# -- shared payload -------------------------------------------------------------------------------


def payload_chunk(offset: int, length: int) -> bytes:
    """Bytes [offset, offset+length) of the test payload: LE uint32 word counter 0, 1, 2, ..."""
    if offset % 4:
        raise ValueError("payload offset must be a multiple of 4")
    words = array("I", range(offset // 4, offset // 4 + (length + 3) // 4))
    if sys.byteorder == "big":
        words.byteswap()
    return words.tobytes()[:length]


def payload_chunks(size: int, chunk: int = 64 * 1024) -> Generator[bytes]:
    for off in range(0, size, chunk):
        yield payload_chunk(off, min(chunk, size - off))


def payload_sha256(size: int) -> str:
    digest = hashlib.sha256()
    for part in payload_chunks(size):
        digest.update(part)
    return digest.hexdigest()


# -- child processes ------------------------------------------------------------------------------


@dataclass
class ChildProcess:
    """A process the harness started: stdout is a pipe, stderr goes to a file kept for reports."""

    name: str
    process: trio.Process
    stderr_path: Path
    _buffer: bytearray = field(default_factory=bytearray)
    _stray: list[str] = field(default_factory=list)  # stdout lines that were not expected

    def stderr_text(self, limit: int = STDERR_TAIL) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def describe(self) -> str:
        parts = [f"{self.name} (pid {self.process.pid}, exit code {self.process.returncode})"]
        if self._stray:
            parts.append("unexpected stdout:\n" + "\n".join(self._stray[-20:]))
        parts.append("stderr:\n" + (self.stderr_text(4000) or "<empty>"))
        return "\n".join(parts)

    async def _next_line(self) -> str:
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            data = await self.process.stdout.receive_some(65536)
            if not data:
                with trio.move_on_after(1.0):
                    await self.process.wait()
                raise PeerError(f"{self.name} closed stdout\n{self.describe()}")
            self._buffer += data
        raw, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer[:] = rest
        return raw.decode(errors="replace").strip()

    async def _reap(self, timeout: float) -> None:
        with trio.move_on_after(timeout):
            await self.process.wait()

    async def _kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self._reap(STOP_TIMEOUT)


async def _spawn(argv: Sequence[str], cwd: Path, stderr_path: Path, stdin: int) -> trio.Process:
    with stderr_path.open("wb") as stderr:
        return await trio.lowlevel.open_process(
            list(argv),
            cwd=cwd,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=CHILD_ENV,
        )


async def _started(
    child: PeerProcess | DaemonProcess, mine: list[Any], children: list[ChildProcess]
) -> None:
    """Track a just-spawned child (in its launcher's list and the test's) and wait until ready."""
    mine.append(child)
    children.append(child)
    await child._wait_ready()


async def _stop_all(started: Sequence[PeerProcess | DaemonProcess]) -> None:
    with trio.CancelScope(shield=True):
        for child in started:
            await child.stop()


@dataclass
class PeerProcess(ChildProcess):
    """A js/py test peer and its JSON command channel (see js/peer.mjs for the contract)."""

    info: Json = field(default_factory=dict)
    _lock: trio.Lock = field(default_factory=trio.Lock)

    @property
    def peer_id(self) -> str:
        return str(self.info["peer_id"])

    @property
    def addrs(self) -> list[str]:
        return [str(a) for a in self.info["addrs"]]

    @property
    def addr(self) -> str:
        """The peer's first 127.0.0.1 TCP address, with its /p2p/ suffix."""
        return _loopback_addr(self.name, self.addrs)

    async def _read_json(self) -> Json:
        while True:
            line = await self._next_line()
            if line.startswith("{"):
                try:
                    value = json.loads(line)
                except ValueError:
                    value = None
                if isinstance(value, dict):
                    return value
            if line:
                self._stray.append(line)

    async def _wait_ready(self) -> None:
        with trio.move_on_after(MAX_WAIT):
            self.info = await self._read_json()
        if not self.info.get("peer_id") or not self.info.get("addrs"):
            raise PeerError(
                f"{self.name}: no valid ready line within {MAX_WAIT:.0f} s: {self.info}\n{self.describe()}"
            )

    async def request(self, cmd: str, timeout: float = MAX_WAIT, **args: Any) -> Json:
        """Send one command and return the raw reply (``ok`` may be false)."""
        timeout = min(timeout, MAX_WAIT)
        message = {"cmd": cmd, **args}
        # The peer gives up a little earlier than we do, so its own error comes back to us.
        message.setdefault("timeout_ms", max(1000, int((timeout - 2.0) * 1000)))
        async with self._lock:
            assert self.process.stdin is not None
            with trio.move_on_after(timeout):
                await self.process.stdin.send_all((json.dumps(message) + "\n").encode())
                return await self._read_json()
        raise PeerError(
            f"{self.name}: no reply to {cmd!r} within {timeout:.0f} s\n{self.describe()}"
        )

    async def command(self, cmd: str, timeout: float = MAX_WAIT, **args: Any) -> Json:
        """Send one command; raise :class:`PeerError` (with the peer's stderr) unless ok=true."""
        reply = await self.request(cmd, timeout=timeout, **args)
        if reply.get("ok") is not True:
            raise PeerError(
                f"{self.name}: {cmd} {args} failed: {reply.get('error')}\n{self.describe()}"
            )
        return reply

    async def stop(self) -> None:
        """Ask the peer to quit (stdin EOF), kill it if it lingers; always reaps the process."""
        if self.process.returncode is None and self.process.stdin is not None:
            with trio.move_on_after(2.0):
                try:
                    await self.process.stdin.send_all(b'{"cmd":"quit"}\n')
                    await self.process.stdin.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            await self._reap(STOP_TIMEOUT)
        await self._kill()


def _loopback_addr(name: str, addrs: Sequence[str]) -> str:
    for a in addrs:
        if a.startswith("/ip4/127.0.0.1/tcp/") and "/p2p/" in a:
            return a
    raise PeerError(f"{name} has no 127.0.0.1 /p2p/ address: {list(addrs)}")


class PeerFactory(Protocol):
    async def __call__(
        self,
        *,
        listen: Sequence[str] = (LOOPBACK_LISTEN,),
        dial: Sequence[str] = (),
        services: Sequence[str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> PeerProcess: ...


@asynccontextmanager
async def peer_launcher(
    kind: str, argv: list[str], cwd: Path, logs: Path, children: list[ChildProcess]
) -> AsyncIterator[PeerFactory]:
    """Yield a factory running ``argv`` (+ flags) in ``cwd``; stderr goes to ``logs``.

    Every started peer is also appended to ``children``; all are stopped on exit.
    """
    peers: list[PeerProcess] = []

    async def start(
        *,
        listen: Sequence[str] = (LOOPBACK_LISTEN,),
        dial: Sequence[str] = (),
        services: Sequence[str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> PeerProcess:
        for addr in (*listen, *dial):
            if not addr.startswith(("/ip4/127.0.0.1/", "/ip6/::1/")):
                raise ValueError(f"interop peers use loopback only, got {addr}")
        args = [*argv, *(x for a in listen for x in ("--listen", a))]
        args += [x for a in dial for x in ("--dial", a)]
        if services is not None:
            args += ["--services", ",".join(services)]
        name = f"{kind}-peer-{len(peers) + 1}"
        stderr_path = logs / f"{name}.stderr"
        process = await _spawn([*args, *extra_args], cwd, stderr_path, subprocess.PIPE)
        peer = PeerProcess(name=name, process=process, stderr_path=stderr_path)
        await _started(peer, peers, children)
        return peer

    try:
        yield start
    finally:
        await _stop_all(peers)


# -- our command line and daemon ------------------------------------------------------------------


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str


async def run_cli(args: Sequence[str], repo: Path, timeout: float = MAX_WAIT) -> CliResult:
    """Run ``python -m fileshare --repo REPO ARGS...`` to completion (bounded by ``timeout``)."""
    argv = [sys.executable, "-m", "fileshare", "--repo", str(repo), *args]
    with trio.fail_after(min(timeout, MAX_WAIT)):
        done = await trio.run_process(
            argv, capture_stdout=True, capture_stderr=True, check=False, cwd=PROJECT_ROOT
        )
    out, err = (done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace"))
    return CliResult(done.returncode, out, err)


@dataclass
class DaemonProcess(ChildProcess):
    """``fileshare daemon`` as a child process; ``addrs`` are the multiaddr lines it printed."""

    addrs: list[str] = field(default_factory=list)

    @property
    def addr(self) -> str:
        return _loopback_addr(self.name, self.addrs)

    async def _wait_ready(self) -> None:
        # Lines arrive one per address; take them until a short pause follows a /p2p/ line.
        with trio.move_on_after(MAX_WAIT):
            while True:
                with trio.move_on_after(0.5 if self.addrs else MAX_WAIT) as pause:
                    line = await self._next_line()
                if pause.cancelled_caught:
                    break
                if line.startswith("/") and "/p2p/" in line:
                    self.addrs.append(line)
                elif line:
                    self._stray.append(line)
        if not self.addrs:
            raise PeerError(
                f"{self.name} printed no /p2p/ address within {MAX_WAIT:.0f} s\n{self.describe()}"
            )

    async def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 10 s; always reaps. Returns the exit code after SIGTERM."""
        polite: int | None = None
        if self.process.returncode is None:
            self.process.terminate()
            await self._reap(10.0)
            polite = self.process.returncode
        await self._kill()
        return polite


class DaemonFactory(Protocol):
    async def __call__(self, repo: Path, *extra_args: str) -> DaemonProcess: ...


@asynccontextmanager
async def daemon_launcher(logs: Path, children: list[ChildProcess]) -> AsyncIterator[DaemonFactory]:
    """Yield a factory: ``await start(repo)`` runs ``fileshare daemon`` on 127.0.0.1:0.

    Every started daemon is also appended to ``children``; all are stopped on exit.
    """
    started: list[DaemonProcess] = []

    async def start(repo: Path, *extra_args: str) -> DaemonProcess:
        name = f"fileshare-daemon-{len(started) + 1}"
        argv = [sys.executable, "-m", "fileshare", "--repo", str(repo), "daemon"]
        argv += ["--listen", LOOPBACK_LISTEN, *extra_args]
        stderr_path = logs / f"{name}.stderr"
        process = await _spawn(argv, PROJECT_ROOT, stderr_path, subprocess.DEVNULL)
        daemon = DaemonProcess(name=name, process=process, stderr_path=stderr_path)
        await _started(daemon, started, children)
        return daemon

    try:
        yield start
    finally:
        await _stop_all(started)
