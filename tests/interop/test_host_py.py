"""Interop between our host and py-libp2p 0.8.1 (real processes on 127.0.0.1, Noise + yamux).

Each check runs over a connection dialled by them and over one dialled by us.
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
    run_cli,
)

pytestmark = pytest.mark.interop

SIZE = 10 * 1024 * 1024
AGENT_PREFIX = "py-libp2p/"


@pytest.mark.parametrize("dialer", DIALERS)
async def test_ping_both_ways(our_node: OurNode, py_peer: PeerFactory, dialer: str) -> None:
    peer = await py_peer()
    await connect(our_node, peer, dialer)
    await check_ping_both_ways(our_node, peer)
    assert_one_connection(our_node, peer, dialer)


@pytest.mark.parametrize("dialer", DIALERS)
async def test_identify_both_ways(our_node: OurNode, py_peer: PeerFactory, dialer: str) -> None:
    peer = await py_peer()
    await connect(our_node, peer, dialer)
    await check_identify_both_ways(our_node, peer, AGENT_PREFIX)
    assert_one_connection(our_node, peer, dialer)


@pytest.mark.parametrize("dialer", DIALERS)
async def test_echo_10mib_both_ways(our_node: OurNode, py_peer: PeerFactory, dialer: str) -> None:
    peer = await py_peer()
    await connect(our_node, peer, dialer)
    await check_echo_both_ways(our_node, peer, SIZE)
    assert_one_connection(our_node, peer, dialer)


async def test_they_dial_us_at_startup(our_node: OurNode, py_peer: PeerFactory) -> None:
    """``--dial`` at start-up: the ready line means the Noise + yamux connection to us is up."""
    peer = await py_peer(dial=[our_node.addr])
    conn = await our_node.wait_connected(peer.peer_id)
    assert conn.direction == "inbound"
    reply = await peer.command("peers")
    assert [p["peer_id"] for p in reply["peers"]] == [our_node.peer_id]
    await check_ping_both_ways(our_node, peer)


async def test_cli_ping(py_peer: PeerFactory, tmp_path: Path) -> None:
    peer = await py_peer()
    result = await run_cli(["ping", peer.addr, "--count", "3"], tmp_path / "repo")
    assert result.returncode == 0, result
    assert peer.peer_id in result.stdout, result


async def test_cli_ping_wrong_peer_id_fails(py_peer: PeerFactory, tmp_path: Path) -> None:
    """Their address with somebody else's PeerId: the Noise handshake proves the mismatch."""
    peer = await py_peer()
    other = await py_peer()
    wrong = f"{peer.addr.split('/p2p/')[0]}/p2p/{other.peer_id}"
    result = await run_cli(["ping", wrong, "--count", "1"], tmp_path / "repo")
    assert result.returncode == 1, result
    assert result.stderr.strip(), result


async def test_daemon_process_serves_py_peer(
    fileshare_daemon: DaemonFactory, py_peer: PeerFactory, tmp_path: Path
) -> None:
    daemon = await fileshare_daemon(tmp_path / "repo")
    peer = await py_peer()
    await peer.command("ping", addr=daemon.addr, count=2)
    seen = await peer.command("identify", addr=daemon.addr)
    assert str(seen["agent"]).startswith("fileshare/")
    assert seen["peer_id"] == daemon.addr.split("/p2p/")[1]
