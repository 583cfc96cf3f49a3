"""Interop between our host and js-libp2p 3.3.11 on Node (real processes on 127.0.0.1, Noise + yamux).

Each check runs over a connection dialled by them and over one dialled by us. The reference test at
the end runs the js peer against the py peer, without our code: if it passes and ours fails, the
fault is ours.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import (
    DIALERS,
    DaemonFactory,
    OurNode,
    PeerFactory,
    assert_one_connection,
    check_echo_both_ways,
    check_identify_both_ways,
    check_ping_both_ways,
    connect,
    payload_sha256,
    run_cli,
)

pytestmark = pytest.mark.interop

SIZE = 10 * 1024 * 1024
AGENT_PREFIX = "js-libp2p/"


@pytest.mark.parametrize("dialer", DIALERS)
async def test_ping_both_ways(our_node: OurNode, js_peer: PeerFactory, dialer: str) -> None:
    peer = await js_peer()
    await connect(our_node, peer, dialer)
    await check_ping_both_ways(our_node, peer)
    assert_one_connection(our_node, peer, dialer)


@pytest.mark.parametrize("dialer", DIALERS)
async def test_identify_both_ways(our_node: OurNode, js_peer: PeerFactory, dialer: str) -> None:
    peer = await js_peer()
    await connect(our_node, peer, dialer)
    await check_identify_both_ways(our_node, peer, AGENT_PREFIX)
    assert_one_connection(our_node, peer, dialer)


@pytest.mark.parametrize("dialer", DIALERS)
async def test_echo_10mib_both_ways(our_node: OurNode, js_peer: PeerFactory, dialer: str) -> None:
    peer = await js_peer()
    await connect(our_node, peer, dialer)
    await check_echo_both_ways(our_node, peer, SIZE)
    assert_one_connection(our_node, peer, dialer)


async def test_they_dial_us_at_startup(our_node: OurNode, js_peer: PeerFactory) -> None:
    """``--dial`` at start-up: the ready line means the Noise + yamux connection to us is up."""
    peer = await js_peer(dial=[our_node.addr])
    conn = await our_node.wait_connected(peer.peer_id)
    assert conn.direction == "inbound"
    reply = await peer.command("peers")
    assert [p["peer_id"] for p in reply["peers"]] == [our_node.peer_id]
    await check_ping_both_ways(our_node, peer)


async def test_cli_ping(js_peer: PeerFactory, tmp_path: Path) -> None:
    peer = await js_peer()
    result = await run_cli(["ping", peer.addr, "--count", "3"], tmp_path / "repo")
    assert result.returncode == 0, result
    assert peer.peer_id in result.stdout, result


async def test_cli_ping_wrong_peer_id_fails(js_peer: PeerFactory, tmp_path: Path) -> None:
    """Their address with somebody else's PeerId: the Noise handshake proves the mismatch."""
    peer = await js_peer()
    other = await js_peer()
    wrong = f"{peer.addr.split('/p2p/')[0]}/p2p/{other.peer_id}"
    result = await run_cli(["ping", wrong, "--count", "1"], tmp_path / "repo")
    assert result.returncode == 1, result
    assert result.stderr.strip(), result


async def test_daemon_process_serves_js_peer(
    fileshare_daemon: DaemonFactory, js_peer: PeerFactory, tmp_path: Path
) -> None:
    daemon = await fileshare_daemon(tmp_path / "repo")
    peer = await js_peer()
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
