"""Network commands: daemon, id, ping, providers, peers, watch."""

from __future__ import annotations

import base64
import logging
import signal
import statistics
from contextlib import aclosing
from functools import partial
from pathlib import Path
from typing import Any

import click
import trio
from multiaddr import Multiaddr

from fileshare.content.cid import CID
from fileshare.daemon import serve_daemon
from fileshare.daemon.client import find_daemon
from fileshare.daemon.sync import SyncManager
from fileshare.errors import DecodeError, FileshareError, NotFound, ProtocolError
from fileshare.identity.keys import PrivateKey
from fileshare.identity.peerid import PeerId
from fileshare.net import addrs
from fileshare.net.host import open_host
from fileshare.net.tcp import ListenError
from fileshare.node import Node, load_identity, open_node, read_daemon_addrs
from fileshare.protocols.identify import IdentifyService
from fileshare.protocols.kad.persist import unpack_addrs
from fileshare.protocols.kad.service import KadService
from fileshare.protocols.ping import PingService, open_ping
from fileshare.protocols.pubsub.announce import (
    ANNOUNCE_TOPIC,
    Announcement,
    announce_share,
    received_announcement,
    subscribe_announcements,
    validate_announcement,
)
from fileshare.repo import Repo

from .commands_daemon import DaemonOptions, daemon_settings, find_daemon_pid
from .common import common_options, emit, options, wait_for_stop
from .config import load_config

log = logging.getLogger("fileshare.cli")
logging.getLogger("multiaddr").setLevel(logging.INFO)  # its DEBUG output drowns ours under --debug

DEFAULT_LISTEN = ("/ip4/0.0.0.0/tcp/4001", "/ip6/::/tcp/4001")


class MultiaddrType(click.ParamType[Multiaddr, Any]):
    name = "MULTIADDR"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> Multiaddr:
        if isinstance(value, Multiaddr):
            return value
        try:
            return addrs.parse(str(value))
        except DecodeError as exc:
            self.fail(str(exc), param, ctx)


MULTIADDR = MultiaddrType()


def check_listen(listen: tuple[Multiaddr, ...]) -> None:
    """``--listen`` takes TCP addresses without a /p2p part (a usage error otherwise)."""
    for addr in listen:
        if not addrs.is_tcp(addr) or addrs.split_peer(addr)[1] is not None:
            raise click.BadParameter(
                f"{addr}: expected /ip4|ip6/<host>/tcp/<port>", param_hint="--listen"
            )


# --- daemon ------------------------------------------------------------------------------------


async def _listen_defaults(node: Node) -> None:
    for text in DEFAULT_LISTEN:
        addr = addrs.parse(text)
        try:
            await node.host.listen([addr])
        except ListenError as exc:
            in_use = "already in use" in str(exc)
            if text.startswith("/ip6/") and not in_use and node.host.listen_addrs():
                log.warning("IPv6 not available, listening on IPv4 only: %s", exc)
                continue
            raise


async def _run_daemon(
    listen: tuple[Multiaddr, ...],
    peers: tuple[Multiaddr, ...],
    dht: str = "server",
    mdns: bool = True,
    servers: DaemonOptions | None = None,
) -> None:
    opts = options()
    servers = servers or DaemonOptions()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_node(
            opts.repo, dht_mode="client" if dht == "client" else "server", mdns=mdns
        ) as node:
            node.bitswap.send_rate = servers.send_rate
            for pin in node.repo.pins():
                if pin.shared:
                    node.kad.start_providing(pin.cid)  # in the DHT, every 22 h
            if listen:
                await node.host.listen(listen)
            else:
                await _listen_defaults(node)
            for addr in node.full_addrs():
                emit({"addr": str(addr)}, str(addr))
            for topic in servers.topics:
                node.pubsub.set_validator(topic, validate_announcement)
                node.pubsub.relay(topic)  # forward share announcements
            async with trio.open_nursery() as http:  # control API + gateway (fileshare.daemon)
                served = await http.start(
                    partial(serve_daemon, node, api=servers.api, gateway=servers.gateway)
                )
                served.api.default_stall_timeout = servers.stall_timeout
                served.api.sync = sync = SyncManager(node)  # sync folders, resumed from the repo
                await sync.resume()
                node.write_daemon_info(served.info())  # before the lines: they mean "ready"
                emit({"api": served.api_url}, f"api {served.api_url}")
                if served.gateway_url is not None:
                    emit({"gateway": served.gateway_url}, f"gateway {served.gateway_url}")
                try:
                    for peer in peers:
                        node.nursery.start_soon(node.connect, peer)
                    await wait_for_stop(signals)
                finally:
                    node.remove_daemon_info()
                    http.cancel_scope.cancel()


@click.command("daemon")
@click.option(
    "--listen",
    "listen",
    multiple=True,
    type=MULTIADDR,
    help="Listen multiaddr (repeatable). Default: /ip4/0.0.0.0/tcp/4001 and /ip6/::/tcp/4001.",
)
@click.option(
    "--peer",
    "peers",
    multiple=True,
    type=MULTIADDR,
    help="Peer multiaddr to dial at start (repeatable); also a DHT bootstrap peer.",
)
@click.option(
    "--dht",
    type=click.Choice(["server", "client"]),
    default=None,
    help="DHT mode: a server answers other peers' DHT queries; a client only asks. [default: server]",
)
@click.option(
    "--no-mdns",
    is_flag=True,
    default=False,
    help="Do not discover or announce peers on the LAN with mDNS (_p2p._udp.local).",
)
@click.option(
    "--api",
    "api_addr",
    default=None,
    metavar="HOST:PORT",
    help="Control API address. [default: 127.0.0.1:0, a free port]",
)
@click.option(
    "--gateway",
    "gateway_addr",
    default=None,
    metavar="HOST:PORT|off",
    help="Trustless HTTP gateway address, or off. [default: 127.0.0.1:0]",
)
@click.option(
    "--max-rate",
    default=None,
    metavar="RATE",
    help="Cap on the bytes per second we send (e.g. 10MiB). Default: no cap.",
)
@common_options
def daemon(
    listen: tuple[Multiaddr, ...],
    peers: tuple[Multiaddr, ...],
    dht: str | None,
    no_mdns: bool,
    api_addr: str | None,
    gateway_addr: str | None,
    max_rate: str | None,
) -> None:
    """Run a node until SIGINT/SIGTERM: serve blocks, the DHT, the control API and the gateway.

    Prints one full multiaddr per line once listening, then `api http://127.0.0.1:PORT` and
    `gateway http://127.0.0.1:PORT`. Other commands on this repository then go through the API.
    Flags override the config file (see `fileshare --help`), which overrides the defaults."""
    check_listen(listen)
    running = find_daemon_pid(options().repo)
    if running is not None:
        raise FileshareError(
            f"a daemon (or `fileshare share`) already runs on {options().repo} (pid {running})"
        )
    listen, peers, servers = daemon_settings(listen, peers, api_addr, gateway_addr, max_rate)
    config = load_config()
    dht = dht or config.dht or "server"
    mdns = not no_mdns and config.mdns is not False
    trio.run(_run_daemon, listen, peers, dht, mdns, servers)


# --- id ----------------------------------------------------------------------------------------


@click.command("id")
@common_options
def id_command() -> None:
    """Print this node's PeerId (and the running daemon's addresses, if any)."""
    opts = options()
    key = load_identity(opts.repo)
    public = key.public_key()
    peer = PeerId.from_public_key(public)
    found = read_daemon_addrs(opts.repo) or []
    emit(
        {
            "peer_id": str(peer),
            "public_key": base64.b64encode(public.to_protobuf()).decode("ascii"),
            "addresses": found,
        },
        "\n".join([str(peer), *found]),
    )


# --- ping --------------------------------------------------------------------------------------


async def _run_ping(target: Multiaddr, count: int, interval: float) -> None:
    async with open_host(PrivateKey.generate()) as host:
        IdentifyService(host)  # peers commonly identify whoever connects
        PingService(host)
        conn = await host.dial(target)
        peer = conn.remote_peer
        if not options().json:
            print(f"PING {peer} via {conn.remote_addr}", flush=True)
        rtts: list[float] = []
        try:
            async with open_ping(host, peer) as session:
                for seq in range(1, count + 1):
                    rtt = await session.ping()
                    rtts.append(rtt)
                    ms = rtt * 1000
                    emit(
                        {"peer_id": str(peer), "seq": seq, "rtt_ms": round(ms, 3)},
                        f"pong from {peer}: seq={seq} time={ms:.2f} ms",
                    )
                    if seq < count:
                        await trio.sleep(interval)
        except trio.TooSlowError:
            raise FileshareError(f"{peer} did not answer the ping in time") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel) as exc:
            raise ProtocolError(
                f"connection to {peer} lost during ping ({type(exc).__name__})"
            ) from None
        ms_values = [r * 1000 for r in rtts]
        emit(
            {
                "peer_id": str(peer),
                "count": len(rtts),
                "min_ms": round(min(ms_values), 3),
                "avg_ms": round(statistics.fmean(ms_values), 3),
                "max_ms": round(max(ms_values), 3),
            },
            f"{len(rtts)} pings: min {min(ms_values):.2f} ms, avg "
            f"{statistics.fmean(ms_values):.2f} ms, max {max(ms_values):.2f} ms",
        )


@click.command("ping")
@click.argument("address", type=MULTIADDR)
@click.option("--count", "-n", default=3, show_default=True, type=click.IntRange(1, 100_000))
@click.option(
    "--interval",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0, 3600),
    help="Seconds between pings.",
)
@common_options
def ping_command(address: Multiaddr, count: int, interval: float) -> None:
    """Ping a libp2p peer at ADDRESS (ours or any other) and print round-trip times."""
    transport, _peer = addrs.split_peer(address)
    if transport is None or not addrs.is_tcp(transport):
        raise click.BadParameter(
            f"{address}: expected /ip4|ip6|dns/<host>/tcp/<port>[/p2p/<PeerId>]",
            param_hint="ADDRESS",
        )
    trio.run(_run_ping, address, count, interval)


# --- watch / share announcements ----------------------------------------------------------------

WATCH_PARALLEL_FETCHES = 2  # announced files fetched at once by `watch --fetch-into`


async def _fetch_announced(
    node: Node, ann: Announcement, into: Path, limiter: trio.CapacityLimiter
) -> None:
    """Fetch one announced file into ``into`` (never overwriting); prints the outcome."""
    target = into / ann.name  # the name was validated: no separators, not "." or ".."
    if target.parent != into or target.exists():
        emit({"fetch_skipped": str(ann.cid), "path": str(target), "reason": "exists"})
        return
    peers = [a for a in ann.addrs if addrs.split_peer(a)[1] is not None]
    async with limiter:
        try:
            result = await node.fetch(ann.cid, target, peers=peers)
        except FileshareError as exc:
            emit(
                {"fetch_error": str(ann.cid), "name": ann.name, "error": str(exc)},
                f"could not fetch {ann.name} ({ann.cid}): {exc}",
            )
            return
    emit(
        {"fetched": str(ann.cid), "path": str(target), "size": result.size},
        f"fetched {ann.name} -> {target}",
    )


async def _run_watch(
    topic: str,
    listen: tuple[Multiaddr, ...],
    peers: tuple[Multiaddr, ...],
    fetch_into: Path | None,
) -> None:
    opts = options()
    fetched: set[CID] = set()
    limiter = trio.CapacityLimiter(WATCH_PARALLEL_FETCHES)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_node(opts.repo, listen=listen, peers=peers) as node:
            messages = subscribe_announcements(node.pubsub, topic)
            for addr in node.full_addrs():
                emit({"addr": str(addr)}, str(addr))
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:
                    await wait_for_stop(signals)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(stop_on_signal)
                async for delivered in messages:
                    try:
                        ann = received_announcement(delivered)
                    except DecodeError as exc:  # the validator already checked; be safe
                        log.warning("skipping announcement from %s: %s", delivered.author, exc)
                        continue
                    data = {
                        **ann.to_json(),
                        "topic": delivered.topic,
                        "msg_id": delivered.msg_id.hex(),
                        "received_from": str(delivered.received_from),
                    }
                    emit(data, f"{ann.name}\t{ann.size}\t{ann.cid}\tfrom {ann.author}")
                    if fetch_into is not None and ann.cid not in fetched:
                        fetched.add(ann.cid)
                        nursery.start_soon(_fetch_announced, node, ann, fetch_into, limiter)
            if opts.json:
                stats = node.pubsub.router.stats + node.pubsub.stats
                emit({"stats": dict(sorted(stats.items()))})


@click.command("watch")
@click.option("--topic", default=ANNOUNCE_TOPIC, show_default=True, help="Announcement topic.")
@click.option(
    "--peer", "peers", multiple=True, type=MULTIADDR, help="Peer multiaddr to dial (repeatable)."
)
@click.option(
    "--listen", "listen", multiple=True, type=MULTIADDR, help="Listen multiaddr (repeatable)."
)
@click.option(
    "--fetch-into",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Fetch every announced file into this directory (existing files are kept).",
)
@common_options
def watch_command(
    topic: str,
    peers: tuple[Multiaddr, ...],
    listen: tuple[Multiaddr, ...],
    fetch_into: Path | None,
) -> None:
    """Print share announcements as they arrive (one JSON object per line with --json).

    Listen addresses, if any, are printed first. Stops on SIGINT/SIGTERM.
    """
    if fetch_into is not None:
        fetch_into.mkdir(parents=True, exist_ok=True)
        fetch_into = fetch_into.resolve()
    trio.run(_run_watch, topic, listen, peers, fetch_into)


async def _run_announce(
    cid: CID,
    name: str,
    size: int,
    hash_name: str,
    topic: str,
    listen: tuple[Multiaddr, ...],
    peers: tuple[Multiaddr, ...],
    wait_peers: int,
    linger: float,
) -> None:
    opts = options()
    async with open_node(opts.repo, listen=listen, peers=peers) as node:
        node.pubsub.set_validator(topic, validate_announcement)
        if not await node.pubsub.wait_for_topic_peers(topic, wait_peers, 20.0):
            raise FileshareError(f"fewer than {wait_peers} peers on {topic} after 20 s")
        msg_id = await announce_share(
            node, cid, name, size, hash_name, topic=topic, wait_for_peers=0
        )
        emit({"msg_id": msg_id.hex(), "peers": len(node.pubsub.topic_peers(topic))}, msg_id.hex())
        await trio.sleep(linger)  # serve IWANTs for a while


@click.command("pubsub-announce", hidden=True)
@click.option("--cid", "cid_text", required=True)
@click.option("--name", required=True)
@click.option("--size", type=click.IntRange(0), required=True)
@click.option("--hash", "hash_name", default="blake3", show_default=True)
@click.option("--topic", default=ANNOUNCE_TOPIC, show_default=True)
@click.option("--peer", "peers", multiple=True, type=MULTIADDR)
@click.option("--listen", "listen", multiple=True, type=MULTIADDR)
@click.option("--wait-peers", default=1, type=click.IntRange(0), show_default=True)
@click.option("--linger", default=2.0, type=click.FloatRange(0, 600), show_default=True)
@common_options
def pubsub_announce_command(
    cid_text: str,
    name: str,
    size: int,
    hash_name: str,
    topic: str,
    peers: tuple[Multiaddr, ...],
    listen: tuple[Multiaddr, ...],
    wait_peers: int,
    linger: float,
) -> None:
    """(testing) Publish one share announcement, then linger."""
    try:
        cid = CID.parse(cid_text)
    except DecodeError as exc:
        raise click.BadParameter(str(exc), param_hint="--cid") from None
    trio.run(_run_announce, cid, name, size, hash_name, topic, listen, peers, wait_peers, linger)


# --- providers / peers (DHT) --------------------------------------------------------------------


PROVIDERS_BOOTSTRAP_WAIT = 10.0  # seconds for the bootstrap peers to be dialled and identified


async def _run_providers(
    cid: CID, peers: tuple[Multiaddr, ...], limit: int, timeout: float
) -> None:
    """A short-lived DHT client (fresh identity) asks the network for providers of ``cid``."""
    opts = options()
    bootstrap = list(peers)
    for text in read_daemon_addrs(opts.repo) or []:  # our own daemon knows the network
        try:
            bootstrap.append(addrs.parse(text))
        except DecodeError:
            continue
    repo = Repo.open(opts.repo) if (opts.repo / "meta.sqlite").exists() else None
    found = 0
    try:
        async with open_host(PrivateKey.generate()) as host:
            identify = IdentifyService(host)
            kad = KadService(host, repo, identify=identify, mode="client", persist=False)
            if bootstrap:
                await kad.bootstrap(bootstrap, timeout=PROVIDERS_BOOTSTRAP_WAIT)
            if not len(kad.table):
                raise FileshareError(
                    "no DHT peer to ask: give one with --peer MULTIADDR (or run `fileshare daemon`)"
                )
            async with aclosing(kad.find_providers(cid, limit=limit, timeout=timeout)) as results:
                async for peer, maddrs in results:
                    full = [str(addrs.with_peer(a, peer)) for a in maddrs]
                    emit({"peer_id": str(peer), "addrs": full}, " ".join([str(peer), *full]))
                    found += 1
    finally:
        if repo is not None:
            repo.close()
    if not found:
        raise NotFound(f"no providers of {cid} found in the DHT")


@click.command("providers")
@click.argument("cid")
@click.option(
    "--peer",
    "peers",
    multiple=True,
    type=MULTIADDR,
    help="DHT peer to start from (repeatable). Also used: a daemon on this repo, saved peers.",
)
@click.option(
    "--num-providers",
    "-n",
    "limit",
    default=20,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="Stop after this many providers.",
)
@click.option(
    "--timeout",
    default=60.0,
    show_default=True,
    type=click.FloatRange(0.1, 3600),
    help="Seconds the whole search may take.",
)
@common_options
def providers_command(cid: str, peers: tuple[Multiaddr, ...], limit: int, timeout: float) -> None:
    """Find providers of CID in the DHT, like `ipfs routing findprovs`.

    Prints one provider per line: its PeerId, then its multiaddrs (space-separated); with --json,
    one {"peer_id", "addrs"} object per line. Exits 1 when none is found.
    """
    try:
        root = CID.parse(cid)
    except DecodeError as exc:
        raise click.BadParameter(str(exc), param_hint="CID") from None
    trio.run(_run_providers, root, peers, limit, timeout)


@click.command("peers")
@common_options
def peers_command() -> None:
    """List peers: the running daemon's live connections, else the DHT routing table it saved.

    With a daemon on the repository: one connected peer per line (PeerId, then the address of the
    connection). Without one: the routing table saved in the repository (a daemon saves it every
    minute), PeerId then its multiaddrs; with --json also when it was last seen.
    """
    client = find_daemon(options().repo)
    if client is not None:
        for row in client.call("GET", "/peers")["peers"]:
            emit(row, f"{row['peer_id']} {row['addr']}")
        return
    repo = Repo.open(options().repo)
    try:
        rows = repo.dht_peers(100_000)
    finally:
        repo.close()
    for raw_id, packed, last_seen in rows:
        try:
            peer = PeerId.from_bytes(raw_id)
        except DecodeError:
            continue
        full: list[str] = []
        for raw in unpack_addrs(packed):
            try:
                full.append(str(addrs.with_peer(addrs.from_bytes(raw), peer)))
            except DecodeError:
                continue
        emit(
            {"peer_id": str(peer), "addrs": full, "last_seen": round(last_seen, 3)},
            " ".join([str(peer), *full]),
        )


COMMANDS: list[click.Command] = [
    daemon,
    id_command,
    ping_command,
    providers_command,
    peers_command,
    watch_command,
    pubsub_announce_command,
]
