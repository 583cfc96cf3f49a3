"""Interop between our host and real peers we did not write, on 127.0.0.1 over Noise + yamux:
py-libp2p 0.8.1 and js-libp2p 3.3.11 on Node.

Every check runs against both implementations, over a connection dialled by them and over one
dialled by us. The reference test at the end runs the js peer against the py peer, without our
code: if it passes and ours fails, the fault is ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import (
    DIALERS,
    OurNode,
    assert_one_connection,
    check_echo_both_ways,
    check_identify_both_ways,
    check_ping_both_ways,
    connect,
)
from .peers import DaemonFactory, PeerFactory, payload_sha256, run_cli

pytestmark = pytest.mark.interop

SIZE = 10 * 1024 * 1024


@dataclass
class Remote:
    start: PeerFactory
    agent_prefix: str


@pytest.fixture(params=["py-libp2p", "js-libp2p"])
def remote(request: pytest.FixtureRequest, py_peer: PeerFactory, js_peer: PeerFactory) -> Remote:
    # both factories are requested (pytest-trio cannot resolve async fixtures lazily); a factory
    # starts nothing until it is called
    factory = py_peer if request.param == "py-libp2p" else js_peer
    return Remote(factory, f"{request.param}/")


@pytest.mark.parametrize("dialer", DIALERS)
async def test_ping_both_ways(our_node: OurNode, remote: Remote, dialer: str) -> None:
    peer = await remote.start()
    await connect(our_node, peer, dialer)
    await check_ping_both_ways(our_node, peer)
    assert_one_connection(our_node, peer, dialer)


@pytest.mark.parametrize("dialer", DIALERS)
async def test_identify_both_ways(our_node: OurNode, remote: Remote, dialer: str) -> None:
    peer = await remote.start()
    await connect(our_node, peer, dialer)
    await check_identify_both_ways(our_node, peer, remote.agent_prefix)
    assert_one_connection(our_node, peer, dialer)


@pytest.mark.parametrize("dialer", DIALERS)
async def test_echo_10mib_both_ways(our_node: OurNode, remote: Remote, dialer: str) -> None:
    peer = await remote.start()
    await connect(our_node, peer, dialer)
    await check_echo_both_ways(our_node, peer, SIZE)
    assert_one_connection(our_node, peer, dialer)


async def test_they_dial_us_at_startup(our_node: OurNode, remote: Remote) -> None:
    """``--dial`` at start-up: the ready line means the Noise + yamux connection to us is up."""
    peer = await remote.start(dial=[our_node.addr])
    conn = await our_node.wait_connected(peer.peer_id)
    assert conn.direction == "inbound"
    reply = await peer.command("peers")
    assert [p["peer_id"] for p in reply["peers"]] == [our_node.peer_id]
    await check_ping_both_ways(our_node, peer)


async def test_cli_ping(remote: Remote, tmp_path: Path) -> None:
    peer = await remote.start()
    result = await run_cli(["ping", peer.addr, "--count", "3"], tmp_path / "repo")
    assert result.returncode == 0, result
    assert peer.peer_id in result.stdout, result


async def test_cli_ping_wrong_peer_id_fails(remote: Remote, tmp_path: Path) -> None:
    """Their address with somebody else's PeerId: the Noise handshake proves the mismatch."""
    peer = await remote.start()
    other = await remote.start()
    wrong = f"{peer.addr.split('/p2p/')[0]}/p2p/{other.peer_id}"
    result = await run_cli(["ping", wrong, "--count", "1"], tmp_path / "repo")
    assert result.returncode == 1, result
    assert result.stderr.strip(), result
    assert result.stderr.startswith("error:"), result.stderr
    assert str(other.peer_id) in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


async def test_daemon_process_serves_remote_peer(
    fileshare_daemon: DaemonFactory, remote: Remote, tmp_path: Path
) -> None:
    daemon = await fileshare_daemon(tmp_path / "repo")
    peer = await remote.start()
    await peer.command("ping", addr=daemon.addr, count=2)
    seen = await peer.command("identify", addr=daemon.addr)
    assert str(seen["agent"]).startswith("fileshare/")
    assert seen["peer_id"] == daemon.addr.split("/p2p/")[1]


async def test_reference_js_and_py_peers_interoperate(
    js_peer: PeerFactory, py_peer: PeerFactory
) -> None:
    """The harness itself: js peer <-> py peer, each dialling once (no fileshare code involved)."""
    expected = payload_sha256(SIZE)
    for dialer_is_js in (True, False):
        js, py = await js_peer(), await py_peer()
        a, b = (js, py) if dialer_is_js else (py, js)
        await a.command("connect", addr=b.addr)
        for x, y in ((a, b), (b, a)):
            ping = await x.command("ping", addr=y.addr, count=2)
            assert len(ping["rtts"]) == 2
            ident = await x.command("identify", addr=y.addr)
            assert ident["peer_id"] == y.peer_id
            assert "/fileshare/echo/1.0.0" in ident["protocols"]
            echo = await x.command("echo", addr=y.addr, size=SIZE)
            assert (echo["bytes"], echo["sent_sha256"], echo["sha256"]) == (
                SIZE,
                expected,
                expected,
            )
            served = (await y.command("served"))["served"]
            assert served[-1]["ok"] and served[-1]["sha256"] == expected
        directions = {p["direction"] for p in (await a.command("peers"))["peers"]}
        assert directions == {"outbound"}, directions
