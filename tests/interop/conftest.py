"""Interop fixtures: real js-libp2p / py-libp2p peer processes on 127.0.0.1, and our node.

``js_peer`` / ``py_peer`` are factories: ``peer = await js_peer(dial=[...], services=[...])`` starts
``js/peer.mjs`` (or ``py_peer.py``) and returns a :class:`~.peers.PeerProcess` (the process
machinery is in peers.py). Every process is reaped on teardown; the stderr of every process a
failing test started is attached to its report. Only 127.0.0.1 is used.

Also here: ``our_node`` (our host with identify, ping and the echo protocol),
``fileshare_daemon`` and the checks test_host_interop.py runs against both peer kinds.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio

from .peers import (
    ECHO_PROTOCOL,
    LOOPBACK_LISTEN,
    MAX_WAIT,
    PROJECT_ROOT,
    ChildProcess,
    DaemonFactory,
    Json,
    PeerFactory,
    PeerProcess,
    daemon_launcher,
    payload_chunks,
    payload_sha256,
    peer_launcher,
)

if TYPE_CHECKING:  # imported lazily below, so a broken host cannot break collection of this dir
    from fileshare.net.host import Connection, Host, NetStream
    from fileshare.protocols.identify import IdentifyMessage, IdentifyService

INTEROP_DIR = Path(__file__).resolve().parent
JS_DIR = INTEROP_DIR / "js"
JS_PEER = JS_DIR / "peer.mjs"
PY_PEER = INTEROP_DIR / "py_peer.py"

_CHILDREN_KEY = pytest.StashKey[list[ChildProcess]]()


def _children(request: pytest.FixtureRequest) -> list[ChildProcess]:
    """The processes the current test started (read by the report hook below)."""
    children: list[ChildProcess] = request.node.stash.setdefault(_CHILDREN_KEY, [])
    return children


def _logs_dir(tmp_path: Path) -> Path:
    logs = tmp_path / "process-logs"  # pytest keeps it (last 3 runs): stderr survives teardown
    logs.mkdir(exist_ok=True)
    return logs


# -- peer processes -------------------------------------------------------------------------------

# Prerequisite checks are sync fixtures: pytest-trio runs async fixtures inside the test's
# trio.run, where a skip/fail would lose its message inside an exception group.


@pytest.fixture
def js_peer_argv() -> list[str]:
    """``[node, peer.mjs]``; skips without ``node``, fails if ``npm ci`` was not run."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: js-libp2p interop tests need Node >= 20")
    if not (JS_DIR / "node_modules" / "libp2p").is_dir():
        pytest.fail(
            f"js-libp2p test dependencies are missing: run `npm ci` in {JS_DIR} "
            "(package.json + package-lock.json there pin every version)",
            pytrace=False,
        )
    return [node, str(JS_PEER)]


@pytest.fixture
def py_peer_argv() -> list[str]:
    """``[python, py_peer.py]``; fails if py-libp2p is not installed."""
    try:
        import libp2p  # noqa: F401
    except ImportError:
        pytest.fail("py-libp2p is missing: install the test extras (libp2p==0.8.1)", pytrace=False)
    return [sys.executable, str(PY_PEER)]


@pytest.fixture
async def js_peer(
    request: pytest.FixtureRequest, js_peer_argv: list[str], tmp_path: Path
) -> AsyncIterator[PeerFactory]:
    """Factory that starts js-libp2p peers (tests/interop/js/peer.mjs)."""
    logs, children = _logs_dir(tmp_path), _children(request)
    async with peer_launcher("js", js_peer_argv, JS_DIR, logs, children) as start:
        yield start


@pytest.fixture
async def py_peer(
    request: pytest.FixtureRequest, py_peer_argv: list[str], tmp_path: Path
) -> AsyncIterator[PeerFactory]:
    """Factory that starts py-libp2p peers (tests/interop/py_peer.py)."""
    logs, children = _logs_dir(tmp_path), _children(request)
    async with peer_launcher("py", py_peer_argv, PROJECT_ROOT, logs, children) as start:
        yield start


@pytest.fixture
async def fileshare_daemon(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[DaemonFactory]:
    """Factory: ``await fileshare_daemon(repo)`` runs ``fileshare daemon`` on 127.0.0.1:0."""
    async with daemon_launcher(_logs_dir(tmp_path), _children(request)) as start:
        yield start


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any]:
    """Attach the stderr (and stray stdout) of every harness process to a failing test's report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for child in item.stash.get(_CHILDREN_KEY, []):
            stray = "\n".join(child._stray[-50:])
            body = child.stderr_text() + (f"\n-- unexpected stdout --\n{stray}" if stray else "")
            if body.strip():
                report.sections.append((f"{child.name} stderr ({report.when})", body))


# -- our side: a fileshare host with identify, ping and the echo protocol -------------------------


def strip_p2p(addr: str) -> str:
    """``/ip4/.../tcp/N/p2p/X`` -> ``/ip4/.../tcp/N``."""
    return addr.split("/p2p/", 1)[0]


@dataclass(frozen=True)
class EchoResult:
    sha256: str
    bytes: int
    seconds: float


@dataclass
class EchoRecord:
    """One echo stream our node served."""

    peer_id: str
    bytes: int = 0
    sha256: str | None = None


@dataclass
class OurNode:
    """Our host under test plus the services the interop tests use."""

    host: Host
    identify_service: IdentifyService
    served: list[EchoRecord] = field(default_factory=list)

    @property
    def peer_id(self) -> str:
        return str(self.host.peer_id)

    @property
    def addr(self) -> str:
        """Our first listen address with its /p2p/ suffix."""
        return f"{self.host.listen_addrs()[0]}/p2p/{self.host.peer_id}"

    def connections_to(self, peer_id: str) -> list[Connection]:
        return [c for c in self.host.connections if str(c.remote_peer) == peer_id]

    async def wait_connected(self, peer_id: str, timeout: float = 10.0) -> Connection:
        """The connection to ``peer_id`` once our side has finished upgrading it (bounded poll)."""
        with trio.move_on_after(timeout):
            while not self.connections_to(peer_id):
                await trio.sleep(0.02)
            return self.connections_to(peer_id)[0]
        raise AssertionError(f"no connection to {peer_id} on our side after {timeout:.0f} s")

    async def ping(self, addr: str, count: int = 3) -> list[float]:
        from fileshare.net.addrs import parse
        from fileshare.protocols.ping import ping

        with trio.fail_after(MAX_WAIT):
            return await ping(self.host, parse(addr), count=count)

    async def identify(self, addr: str) -> IdentifyMessage:
        """Run identify against ``addr`` (re-using the connection to it)."""
        from fileshare.net.addrs import parse

        with trio.fail_after(MAX_WAIT):
            conn = await self.host.dial(parse(addr))
            return await self.identify_service.identify(conn)

    async def echo(self, addr: str, size: int) -> EchoResult:
        """Send ``size`` payload bytes on our echo protocol, half-close, read everything back."""
        from fileshare.net.addrs import parse

        digest = hashlib.sha256()
        count = 0
        with trio.fail_after(MAX_WAIT):
            start = trio.current_time()
            stream, protocol = await self.host.new_stream(parse(addr), [ECHO_PROTOCOL])
            assert protocol == ECHO_PROTOCOL

            async def send() -> None:
                for part in payload_chunks(size):
                    await stream.send_all(part)
                await stream.send_eof()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                while data := await stream.receive_some(256 * 1024):
                    digest.update(data)
                    count += len(data)
            await stream.aclose()
        return EchoResult(digest.hexdigest(), count, trio.current_time() - start)

    async def _serve_echo(self, stream: NetStream, conn: Connection) -> None:
        record = EchoRecord(peer_id=str(conn.remote_peer))
        self.served.append(record)
        digest = hashlib.sha256()
        while data := await stream.receive_some(256 * 1024):
            digest.update(data)
            record.bytes += len(data)
            await stream.send_all(data)
        record.sha256 = digest.hexdigest()
        await stream.send_eof()


@pytest.fixture
async def our_node() -> AsyncIterator[OurNode]:
    """A fileshare host on 127.0.0.1 (fresh Ed25519 key) serving identify, ping and echo."""
    from fileshare.identity.keys import PrivateKey
    from fileshare.net.addrs import parse
    from fileshare.net.host import open_host
    from fileshare.protocols.identify import IdentifyService
    from fileshare.protocols.ping import PingService

    async with open_host(PrivateKey.generate(), listen=[parse(LOOPBACK_LISTEN)]) as host:
        node = OurNode(host=host, identify_service=IdentifyService(host))
        PingService(host)
        host.set_stream_handler(ECHO_PROTOCOL, node._serve_echo)
        yield node


# -- checks test_host_interop.py runs against both peer kinds -------------------------------------

DIALERS = ("they_dial_us", "we_dial_them")


async def connect(node: OurNode, peer: PeerProcess, dialer: str) -> None:
    """Open the one connection between us and ``peer``, dialled by the side ``dialer`` names."""
    from fileshare.net.addrs import parse

    if dialer == "they_dial_us":
        reply = await peer.command("connect", addr=node.addr)
        assert reply["peer_id"] == node.peer_id
        conn = await node.wait_connected(peer.peer_id)
        assert conn.direction == "inbound"
    elif dialer == "we_dial_them":
        with trio.fail_after(MAX_WAIT):
            conn = await node.host.dial(parse(peer.addr))
        assert str(conn.remote_peer) == peer.peer_id
        assert conn.direction == "outbound"
    else:
        raise ValueError(dialer)
    await wait_peer_sees(peer, node.peer_id)


async def wait_peer_sees(peer: PeerProcess, peer_id: str, timeout: float = 10.0) -> Json:
    """Poll ``peer``'s connections until one goes to ``peer_id``.

    Our side may finish the upgrade before theirs; a command sent at once could then make the
    peer dial a second connection.
    """
    with trio.move_on_after(timeout):
        while True:
            for entry in (await peer.command("peers"))["peers"]:
                if entry["peer_id"] == peer_id:
                    return dict(entry)
            await trio.sleep(0.05)
    raise AssertionError(f"{peer.name} has no connection to {peer_id} after {timeout:.0f} s")


def assert_one_connection(node: OurNode, peer: PeerProcess, dialer: str) -> None:
    """Everything ran over the connection ``connect`` opened: no second one appeared."""
    conns = node.connections_to(peer.peer_id)
    assert len(conns) == 1, conns
    assert conns[0].direction == ("inbound" if dialer == "they_dial_us" else "outbound")


async def check_ping_both_ways(node: OurNode, peer: PeerProcess) -> None:
    theirs = await peer.command("ping", addr=node.addr, count=3)
    assert len(theirs["rtts"]) == 3
    assert all(0 <= r < 10_000 for r in theirs["rtts"])  # milliseconds
    ours = await node.ping(peer.addr, count=3)
    assert len(ours) == 3
    assert all(0 <= r < 10 for r in ours)  # seconds


async def check_identify_both_ways(node: OurNode, peer: PeerProcess, agent_prefix: str) -> None:
    from fileshare.identity.peerid import PeerId

    # They identify us.
    seen = await peer.command("identify", addr=node.addr)
    assert seen["peer_id"] == node.peer_id
    assert str(seen["agent"]).startswith("fileshare/"), seen
    assert seen["protocol_version"] == "ipfs/0.1.0"
    for proto in ("/ipfs/id/1.0.0", "/ipfs/ping/1.0.0", ECHO_PROTOCOL):
        assert proto in seen["protocols"], seen
    assert strip_p2p(node.addr) in {strip_p2p(a) for a in seen["listen_addrs"]}, seen
    assert str(seen["observed_addr"]).startswith("/ip4/127.0.0.1/tcp/"), seen
    assert seen["has_public_key"]
    assert seen["public_key_matches"] is True, seen

    # We identified them automatically when the connection opened (peer store filled) ...
    their_id = PeerId.from_string(peer.peer_id)
    with trio.fail_after(10):
        await node.identify_service.wait_identified(their_id)
    assert ECHO_PROTOCOL in node.host.peerstore.protocols(their_id)
    # ... and identify them again on request.
    msg = await node.identify(peer.addr)
    assert str(msg.agent_version).startswith(agent_prefix), msg
    for proto in ("/ipfs/id/1.0.0", "/ipfs/ping/1.0.0", ECHO_PROTOCOL):
        assert proto in msg.protocols, msg
    assert strip_p2p(peer.addr) in {strip_p2p(str(a)) for a in msg.listen_multiaddrs()}, msg
    key = msg.public_key_object()
    assert key is not None
    assert str(PeerId.from_public_key(key)) == peer.peer_id
    observed = msg.observed_multiaddr()
    assert observed is not None and str(observed).startswith("/ip4/127.0.0.1/tcp/"), msg


async def check_echo_both_ways(node: OurNode, peer: PeerProcess, size: int) -> None:
    expected = payload_sha256(size)
    # They send to us.
    theirs = await peer.command("echo", addr=node.addr, size=size)
    assert (theirs["bytes"], theirs["sent_sha256"]) == (size, expected)
    assert theirs["sha256"] == expected
    assert [(r.bytes, r.sha256) for r in node.served] == [(size, expected)]
    # We send to them.
    ours = await node.echo(peer.addr, size)
    assert (ours.bytes, ours.sha256) == (size, expected)
    served = (await peer.command("served"))["served"]
    assert [(r["bytes"], r["sha256"], r["ok"]) for r in served] == [(size, expected, True)]
    mbps = (size / theirs["seconds"] / 1e6, size / ours.seconds / 1e6)
    print(
        f"echo {size} B round trip: {peer.name} -> us {mbps[0]:.1f} MB/s, us -> them {mbps[1]:.1f} MB/s"
    )
