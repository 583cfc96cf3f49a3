"""py-libp2p interop test peer; same CLI and stdin/stdout contract as tests/interop/js/peer.mjs.

    python tests/interop/py_peer.py --listen /ip4/127.0.0.1/tcp/0 [--dial MA]... [--services identify,ping,echo]

Prints ONE JSON line {"peer_id", "addrs", "protocols", "impl"} once listening (after any --dial
succeeded), then answers JSON commands read from stdin, one line each: {"ok": true, ...} or
{"ok": false, "error": "..."}. A command may carry "id" (echoed back) and "timeout_ms" (default
25000). EOF on stdin or {"cmd": "quit"} stops the peer.

Stack: TCP + Noise only (no plaintext/secio/TLS offered) + yamux, Ed25519 identity. identify and ping
are served by py-libp2p's BasicHost itself (always on); the services flag controls which client
commands exist and whether "/fileshare/echo/1.0.0" is served. New protocols are new SERVICES entries.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import os
import sys
import time
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import multiaddr
import trio
from libp2p import create_yamux_muxer_option, generate_new_ed25519_identity, new_host
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.host.ping import ID as PING_ID
from libp2p.host.ping import perform_ping_roundtrip
from libp2p.identity.identify.identify import ID as IDENTIFY_ID
from libp2p.identity.identify.pb.identify_pb2 import Identify
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID as PeerID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.utils.varint import read_length_prefixed_protobuf

ECHO_PROTOCOL = TProtocol("/fileshare/echo/1.0.0")
CHUNK = 64 * 1024
DEFAULT_TIMEOUT_MS = 25_000
DEFAULT_SERVICES = ("identify", "ping", "echo")

Json = dict[str, Any]
Command = Callable[["Peer", Json], Awaitable[Json]]


def payload_chunk(offset: int, length: int) -> bytes:
    """Bytes [offset, offset+length) of the shared test payload (LE uint32 word counter)."""
    if offset % 4:
        raise ValueError("payload offset must be a multiple of 4")
    first = offset // 4
    words = array("I", range(first, first + (length + 3) // 4))
    if sys.byteorder == "big":
        words.byteswap()
    return words.tobytes()[:length]


@dataclass
class Peer:
    """The running py-libp2p host plus what the commands need."""

    host: Any
    services: tuple[str, ...]
    served: list[Json] = field(default_factory=list)

    async def connect(self, addr: str) -> Any:
        """Dial (or reuse a connection to) the peer named by a /p2p/ multiaddr; return its PeerID."""
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        await self.host.connect(info)
        return info.peer_id

    def info(self) -> Json:
        return {
            "peer_id": str(self.host.get_id()),
            "addrs": [str(a) for a in self.host.get_addrs()],
            "protocols": sorted(str(p) for p in self.host.get_mux().get_protocols() if p),
            "impl": "py-libp2p",
        }


# -- echo protocol -----------------------------------------------------------------------------


async def _read_all(stream: Any, sink: Callable[[bytes], Awaitable[None] | None]) -> None:
    while True:
        try:
            data = await stream.read(CHUNK)
        except StreamEOF:
            return
        if not data:
            return
        result = sink(data)
        if result is not None:
            await result


def echo_handler(peer: Peer) -> Callable[[Any], Awaitable[None]]:
    async def handle(stream: Any) -> None:
        record: Json = {
            "peer_id": str(stream.muxed_conn.peer_id),
            "bytes": 0,
            "sha256": None,
            "ok": False,
        }
        peer.served.append(record)
        digest = hashlib.sha256()

        async def echo_back(data: bytes) -> None:
            digest.update(data)
            record["bytes"] += len(data)
            await stream.write(data)

        try:
            await _read_all(stream, echo_back)
            # Complete once everything is echoed: the client may ask "served" as soon as it
            # sees our FIN, possibly before close() returns here.
            record["sha256"] = digest.hexdigest()
            record["ok"] = True
            await stream.close()
        except Exception as exc:
            record["ok"] = False
            record["error"] = f"{type(exc).__name__}: {exc}"
            print(f"echo handler failed: {record['error']}", file=sys.stderr, flush=True)
            await stream.reset()

    return handle


async def cmd_echo(peer: Peer, c: Json) -> Json:
    """{"cmd":"echo","addr":MA,"size":N} -> {"sha256","sent_sha256","bytes","seconds"}."""
    size = int(c.get("size", 0))
    peer_id = await peer.connect(c["addr"])
    stream = await peer.host.new_stream(peer_id, [TProtocol(c.get("protocol", ECHO_PROTOCOL))])
    received = hashlib.sha256()
    sent = hashlib.sha256()
    count = 0

    def take(data: bytes) -> None:
        nonlocal count
        received.update(data)
        count += len(data)

    async def send() -> None:
        for off in range(0, size, CHUNK):
            buf = payload_chunk(off, min(CHUNK, size - off))
            sent.update(buf)
            await stream.write(buf)
        await stream.close_write()

    started = time.monotonic()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            await _read_all(stream, take)
    except BaseException:
        await stream.reset()
        raise
    await stream.close()
    return {
        "sha256": received.hexdigest(),
        "sent_sha256": sent.hexdigest(),
        "bytes": count,
        "seconds": time.monotonic() - started,
    }


async def cmd_served(peer: Peer, c: Json) -> Json:
    """{"cmd":"served"} -> every echo stream served: [{"peer_id","bytes","sha256","ok"}]."""
    return {"served": peer.served}


# -- identify / ping clients ----------------------------------------------------------------


async def cmd_identify(peer: Peer, c: Json) -> Json:
    """{"cmd":"identify","addr":MA} -> what the remote says about itself."""
    peer_id = await peer.connect(c["addr"])
    stream = await peer.host.new_stream(peer_id, [IDENTIFY_ID])
    try:
        data = await read_length_prefixed_protobuf(stream, use_varint_format=True)
    finally:
        await stream.close()
    msg = Identify()
    msg.ParseFromString(data)
    observed = str(multiaddr.Multiaddr(msg.observed_addr)) if msg.observed_addr else None
    return {
        "peer_id": str(peer_id),
        "protocols": list(msg.protocols),
        "agent": msg.agent_version or None,
        "protocol_version": msg.protocol_version or None,
        "listen_addrs": [str(multiaddr.Multiaddr(a)) for a in msg.listen_addrs],
        "observed_addr": observed,
        "has_public_key": bool(msg.public_key),
        "public_key_matches": bool(msg.public_key)
        and PeerID.from_pubkey(_deserialize_public_key(msg.public_key)) == peer_id,
    }


def _deserialize_public_key(data: bytes) -> Any:
    from libp2p.crypto.serialization import deserialize_public_key

    return deserialize_public_key(data)


async def cmd_ping(peer: Peer, c: Json) -> Json:
    """{"cmd":"ping","addr":MA,"count":N} -> {"rtt_ms": first, "rtts": [...]} (one stream)."""
    peer_id = await peer.connect(c["addr"])
    stream = await peer.host.new_stream(peer_id, [PING_ID])
    try:
        rtts = [await perform_ping_roundtrip(stream) for _ in range(int(c.get("count", 1)))]
    finally:
        await stream.close()
    return {"rtt_ms": rtts[0] if rtts else None, "rtts": rtts}


# -- core commands -----------------------------------------------------------------------------


async def cmd_info(peer: Peer, c: Json) -> Json:
    return peer.info()


async def cmd_connect(peer: Peer, c: Json) -> Json:
    peer_id = await peer.connect(c["addr"])
    return {"peer_id": str(peer_id)}


async def cmd_disconnect(peer: Peer, c: Json) -> Json:
    if "peer_id" in c:
        peer_id = PeerID.from_base58(c["peer_id"])
    else:
        peer_id = info_from_p2p_addr(multiaddr.Multiaddr(c["addr"])).peer_id
    await peer.host.disconnect(peer_id)
    return {}


async def cmd_peers(peer: Peer, c: Json) -> Json:
    out = []
    for peer_id, conns in peer.host.get_network().get_connections_map().items():
        for conn in conns:
            addrs = (
                conn.get_transport_addresses() if hasattr(conn, "get_transport_addresses") else []
            )
            out.append(
                {
                    "peer_id": str(peer_id),
                    "remote_addr": str(addrs[0]) if addrs else None,
                    "direction": str(getattr(conn, "direction", "unknown")).lower().split(".")[-1],
                }
            )
    return {"peers": out}


CORE: dict[str, Command] = {
    "info": cmd_info,
    "connect": cmd_connect,
    "disconnect": cmd_disconnect,
    "peers": cmd_peers,
}


@dataclass(frozen=True)
class Service:
    """An optional protocol: server-side setup and the client commands it adds."""

    commands: dict[str, Command]
    setup: Callable[[Peer], None] | None = None
    # Optional: an async context manager run around the command loop (background services).
    run: Callable[[Peer], AbstractAsyncContextManager[None]] | None = None


def _setup_echo(peer: Peer) -> None:
    peer.host.set_stream_handler(ECHO_PROTOCOL, echo_handler(peer))


# -- gossipsub (py-libp2p Pubsub + GossipSub, StrictSign, 0.2 s heartbeat) ----------------------


@dataclass
class _Gossip:
    pubsub: Any = None
    nursery: Any = None
    received: list[Json] = field(default_factory=list)


_GOSSIP = _Gossip()


@asynccontextmanager
async def _run_gossipsub(peer: Peer) -> AsyncIterator[None]:
    from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
    from libp2p.pubsub.pubsub import Pubsub
    from libp2p.tools.anyio_service import background_trio_service

    router = GossipSub(
        protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11, PROTOCOL_ID],
        degree=6,
        degree_low=4,
        degree_high=12,
        heartbeat_interval=0.2,  # type: ignore[arg-type]  # default is 120 s
    )
    pubsub = Pubsub(peer.host, router, strict_signing=True)
    async with background_trio_service(pubsub), background_trio_service(router):
        await pubsub.wait_until_ready()
        async with trio.open_nursery() as nursery:
            _GOSSIP.pubsub, _GOSSIP.nursery = pubsub, nursery
            yield
            nursery.cancel_scope.cancel()


async def _collect(sub: Any) -> None:
    async for msg in sub:
        _GOSSIP.received.append(
            {
                "topic": next(iter(msg.topicIDs)) if msg.topicIDs else None,
                "data_b64": base64.b64encode(msg.data).decode(),
                "from": str(PeerID(msg.from_id)),
                "seqno": int.from_bytes(msg.seqno, "big"),
                "received_ms": int(time.time() * 1000),
            }
        )


async def cmd_subscribe(peer: Peer, c: Json) -> Json:
    """{"cmd":"subscribe","topic":T} -> {}"""
    sub = await _GOSSIP.pubsub.subscribe(c["topic"])
    _GOSSIP.nursery.start_soon(_collect, sub)
    return {}


async def cmd_publish(peer: Peer, c: Json) -> Json:
    """{"cmd":"publish","topic":T,"data_b64":B} -> {}"""
    await _GOSSIP.pubsub.publish(c["topic"], base64.b64decode(c["data_b64"]))
    return {}


async def cmd_received(peer: Peer, c: Json) -> Json:
    """{"cmd":"received"[,"topic":T]} -> {"messages": [...]}"""
    topic = c.get("topic")
    return {"messages": [m for m in _GOSSIP.received if topic is None or m["topic"] == topic]}


async def cmd_topic_peers(peer: Peer, c: Json) -> Json:
    """{"cmd":"topic_peers","topic":T} -> {"subscribers": [...], "mesh": [...]}"""
    pubsub = _GOSSIP.pubsub
    subs = pubsub.peer_topics.get(c["topic"], set())
    mesh = pubsub.router.mesh.get(c["topic"], set())
    return {"subscribers": sorted(str(p) for p in subs), "mesh": sorted(str(p) for p in mesh)}


# -- kad-dht (py-libp2p KadDHT, server mode) ------------------------------------------------------


@dataclass
class _Kad:
    dht: Any = None


_KAD = _Kad()


@asynccontextmanager
async def _run_kad(peer: Peer) -> AsyncIterator[None]:
    from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
    from libp2p.tools.anyio_service import background_trio_service

    dht = KadDHT(peer.host, DHTMode.SERVER)
    async with background_trio_service(dht):
        _KAD.dht = dht
        yield


async def cmd_provide(peer: Peer, c: Json) -> Json:
    """{"cmd":"provide","cid":C} -> {"ok_provide": bool}"""
    return {"ok_provide": bool(await _KAD.dht.provide(c["cid"]))}


async def cmd_find_providers(peer: Peer, c: Json) -> Json:
    """{"cmd":"find_providers","cid":C[,"count":N]} -> {"providers":[{"peer_id","addrs"}]} (deduped)"""
    found: dict[str, Json] = {}
    for info in await _KAD.dht.find_providers(c["cid"], int(c.get("count", 20))):
        found.setdefault(
            str(info.peer_id), {"peer_id": str(info.peer_id), "addrs": [str(a) for a in info.addrs]}
        )
    return {"providers": list(found.values())}


async def cmd_dht_peers(peer: Peer, c: Json) -> Json:
    """{"cmd":"dht_peers"} -> {"peers":[PeerId...]} (routing table)"""
    return {"peers": [str(p) for p in _KAD.dht.routing_table.get_peer_ids()]}


SERVICES: dict[str, Service] = {
    "kad": Service(
        commands={
            "provide": cmd_provide,
            "find_providers": cmd_find_providers,
            "dht_peers": cmd_dht_peers,
        },
        run=_run_kad,
    ),
    "gossipsub": Service(
        commands={
            "subscribe": cmd_subscribe,
            "publish": cmd_publish,
            "received": cmd_received,
            "topic_peers": cmd_topic_peers,
        },
        run=_run_gossipsub,
    ),
    "identify": Service(commands={"identify": cmd_identify}),
    "ping": Service(commands={"ping": cmd_ping}),
    "echo": Service(commands={"echo": cmd_echo, "served": cmd_served}, setup=_setup_echo),
}


# -- process driver ----------------------------------------------------------------------------


def write_line(obj: Json) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def run_command(peer: Peer, commands: dict[str, Command], c: Json) -> Json:
    reply: Json = {"id": c["id"]} if "id" in c else {}
    fn = commands.get(str(c.get("cmd")))
    if fn is None:
        known = ",".join(["quit", *commands])
        return {**reply, "ok": False, "error": f"unknown command {c.get('cmd')!r}; known: {known}"}
    try:
        with trio.fail_after(float(c.get("timeout_ms", DEFAULT_TIMEOUT_MS)) / 1000):
            result = await fn(peer, c)
    except Exception as exc:
        logging.exception("command %s failed", c.get("cmd"))
        return {**reply, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {**reply, "ok": True, **result}


async def serve_stdin(peer: Peer, commands: dict[str, Command]) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buf = b""
    while True:
        data = await stdin.receive_some(65536)
        if not data:
            return
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if not line.strip():
                continue
            try:
                c = json.loads(line)
                if not isinstance(c, dict):
                    raise ValueError("command must be a JSON object")
            except ValueError as exc:
                write_line({"ok": False, "error": f"bad JSON: {exc}"})
                continue
            if c.get("cmd") == "quit":
                write_line({**({"id": c["id"]} if "id" in c else {}), "ok": True})
                return
            write_line(await run_command(peer, commands, c))


async def main(args: argparse.Namespace) -> None:
    key_pair = generate_new_ed25519_identity()
    noise = NoiseTransport(key_pair, noise_privkey=create_new_x25519_key_pair().private_key)
    host = new_host(
        key_pair=key_pair,
        sec_opt={NOISE_PROTOCOL_ID: noise},  # Noise only: nothing can negotiate down
        muxer_opt=create_yamux_muxer_option(),
        listen_addrs=[multiaddr.Multiaddr(a) for a in args.listen],
        enable_mDNS=False,
        enable_upnp=False,
        bootstrap=None,
    )
    peer = Peer(host=host, services=tuple(args.services))
    commands = dict(CORE)
    for name in peer.services:
        service = SERVICES[name]
        commands.update(service.commands)
        if service.setup is not None:
            service.setup(peer)
    async with (
        host.run(listen_addrs=[multiaddr.Multiaddr(a) for a in args.listen]),
        AsyncExitStack() as stack,
    ):
        for name in peer.services:
            run = SERVICES[name].run
            if run is not None:
                await stack.enter_async_context(run(peer))
        for addr in args.dial:
            with trio.fail_after(DEFAULT_TIMEOUT_MS / 1000):
                await peer.connect(addr)
        write_line(peer.info())
        await serve_stdin(peer, commands)
    # host.run's exit path can linger on background services: do not wait for it.
    os._exit(0)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", action="append", default=[])
    parser.add_argument("--dial", action="append", default=[])
    parser.add_argument("--services", default=",".join(DEFAULT_SERVICES))
    args = parser.parse_args(argv)
    args.listen = args.listen or ["/ip4/127.0.0.1/tcp/0"]
    args.services = [s.strip() for s in args.services.split(",") if s.strip()]
    unknown = [s for s in args.services if s not in SERVICES]
    if unknown:
        parser.error(f"unknown service(s) {unknown}; known: {','.join(SERVICES)}")
    return args


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        trio.run(main, parse_args(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
