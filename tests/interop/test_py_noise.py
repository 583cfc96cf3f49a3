"""Interop: TCP -> multistream "/noise" -> Noise XX with a real py-libp2p peer on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from fileshare.identity.keys import PrivateKey
from fileshare.identity.peerid import PeerId
from fileshare.net.buffered import BufferedStream
from fileshare.net.multistream import select_inbound, select_outbound
from fileshare.net.noise import NOISE_PROTOCOL_ID, secure_inbound, secure_outbound

pytest.importorskip("libp2p")

pytestmark = pytest.mark.interop

PEER_SCRIPT = Path(__file__).parent / "py_peers" / "noise_peer.py"
TIMEOUT = 30


class PyPeer:
    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self._buf = b""

    async def read_json(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while b"\n" not in self._buf:
            data = await self.proc.stdout.receive_some()
            if not data:
                raise AssertionError("py-libp2p peer exited without output")
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        result: dict[str, Any] = json.loads(line)
        return result


@asynccontextmanager
async def py_peer(*args: str) -> AsyncIterator[PyPeer]:
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(PEER_SCRIPT), *args], stdout=subprocess.PIPE
    )
    try:
        yield PyPeer(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
        with trio.move_on_after(5):
            await proc.wait()


async def test_we_dial_py_libp2p() -> None:
    key = PrivateKey.generate()
    me = PeerId.from_public_key(key.public_key())
    with trio.fail_after(TIMEOUT):
        async with py_peer("listen") as peer:
            info = await peer.read_json()
            py_id = PeerId.from_string(info["peer_id"])
            stream = BufferedStream(await trio.open_tcp_stream("127.0.0.1", info["port"]))
            assert await select_outbound(stream, ["/tls/1.0.0", NOISE_PROTOCOL_ID]) == "/noise"
            secure = await secure_outbound(stream, key, expected_peer=py_id)
            assert secure.remote_peer == py_id
            assert secure.local_peer == me
            await secure.send_all(b"hi from fileshare")
            assert await secure.receive_some() == b"echo:hi from fileshare"
            result = await peer.read_json()
            assert result["remote_peer"] == str(me)  # py-libp2p derived our real PeerId
            await secure.aclose()


async def test_py_libp2p_dials_us() -> None:
    key = PrivateKey.generate()
    me = PeerId.from_public_key(key.public_key())
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    try:
        with trio.fail_after(TIMEOUT):
            async with py_peer("dial", str(port), str(me)) as peer:
                info = await peer.read_json()
                py_id = PeerId.from_string(info["peer_id"])
                stream = BufferedStream(await listeners[0].accept())
                assert await select_inbound(stream, [NOISE_PROTOCOL_ID]) == "/noise"
                secure = await secure_inbound(stream, key)
                assert secure.remote_peer == py_id
                assert secure.remote_public_key.key_type == 1
                assert await secure.receive_some() == b"hello from py-libp2p"
                await secure.send_all(b"hello back")
                result = await peer.read_json()
                assert result == {"remote_peer": str(me), "reply": "hello back"}
                await secure.aclose()
    finally:
        await listeners[0].aclose()


async def test_we_dial_a_py_libp2p_host() -> None:
    """A full py-libp2p host (noise only); it wants a muxer next, so we stop after the handshake."""
    key = PrivateKey.generate()
    with trio.fail_after(TIMEOUT):
        async with py_peer("host") as peer:
            info = await peer.read_json()
            py_id = PeerId.from_string(info["peer_id"])
            stream = BufferedStream(await trio.open_tcp_stream("127.0.0.1", info["port"]))
            assert await select_outbound(stream, [NOISE_PROTOCOL_ID]) == "/noise"
            secure = await secure_outbound(stream, key, expected_peer=py_id)
            assert secure.remote_peer == py_id
            # the host now runs multistream inside the channel: its header proves it decrypted us
            await secure.send_all(b"\x13/multistream/1.0.0\n")
            reply = await secure.receive_some()
            assert reply.startswith(b"\x13/multistream/1.0.0\n")
            await secure.aclose()


async def test_py_libp2p_refuses_wrong_expected_peer() -> None:
    """We dial py-libp2p expecting someone else: our side refuses before sending message 3."""
    from fileshare.net.noise import HandshakeError

    key = PrivateKey.generate()
    other = PeerId.from_public_key(PrivateKey.generate().public_key())
    with trio.fail_after(TIMEOUT):
        async with py_peer("listen") as peer:
            info = await peer.read_json()
            stream = BufferedStream(await trio.open_tcp_stream("127.0.0.1", info["port"]))
            await select_outbound(stream, [NOISE_PROTOCOL_ID])
            with pytest.raises(HandshakeError, match="expected peer"):
                await secure_outbound(stream, key, expected_peer=other)
            await stream.aclose()
