"""py-libp2p test peer for the Noise interop tests (run as a script, not imported by pytest).

    noise_peer.py listen                 one inbound TCP connection: multistream + /noise (responder)
    noise_peer.py dial PORT PEER_ID      one outbound connection to 127.0.0.1:PORT (initiator)
    noise_peer.py host                   a full py-libp2p host (noise only) listening on 127.0.0.1

Every mode prints JSON lines on stdout: first {"peer_id", ...}, then {"remote_peer", "reply"} once
the secure channel is up and one message went each way. Only py-libp2p's public classes are used.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.io.trio import TrioTCPStream
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.security.security_multistream import SecurityMultistream


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def security(key_pair: Any) -> dict[Any, Any]:
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    return {NOISE_ID: noise}


async def exchange(secure: Any, initiator: bool) -> None:
    remote = secure.get_remote_peer().to_base58()
    if initiator:
        await secure.write(b"hello from py-libp2p")
        reply = await secure.read()
    else:
        reply = await secure.read()
        await secure.write(b"echo:" + reply)
    emit(remote_peer=remote, reply=reply.decode("utf-8", "replace"))
    await secure.close()


async def listen() -> None:
    key_pair = create_new_key_pair()
    sms = SecurityMultistream(security(key_pair))
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    emit(peer_id=ID.from_pubkey(key_pair.public_key).to_base58(), port=port)
    stream = await listeners[0].accept()
    conn = RawConnection(TrioTCPStream(stream), False)
    secure = await sms.secure_inbound(conn)
    await exchange(secure, initiator=False)


async def dial(port: int, peer: str) -> None:
    key_pair = create_new_key_pair()
    sms = SecurityMultistream(security(key_pair))
    emit(peer_id=ID.from_pubkey(key_pair.public_key).to_base58())
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = RawConnection(TrioTCPStream(stream), True)
    secure = await sms.secure_outbound(conn, ID.from_base58(peer))
    await exchange(secure, initiator=True)


async def host() -> None:
    key_pair = create_new_key_pair()
    h = new_host(key_pair=key_pair, sec_opt=security(key_pair))
    async with h.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        addr = h.get_addrs()[0]
        port = int(addr.value_for_protocol("tcp"))
        emit(peer_id=h.get_id().to_base58(), port=port)
        await trio.sleep(30)


def main() -> None:
    if os.environ.get("NOISE_PEER_DEBUG"):
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    mode = sys.argv[1]
    if mode == "listen":
        trio.run(listen)
    elif mode == "dial":
        trio.run(dial, int(sys.argv[2]), sys.argv[3])
    elif mode == "host":
        trio.run(host)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
