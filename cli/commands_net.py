"""Network commands: daemon, id, ping (and later peers, providers)."""

from __future__ import annotations

import base64
import logging
import signal
import statistics
from typing import Any

import click
import trio
from multiaddr import Multiaddr

from fileshare.errors import DecodeError, FileshareError, ProtocolError
from fileshare.identity.keys import PrivateKey
from fileshare.identity.peerid import PeerId
from fileshare.net import addrs
from fileshare.net.host import open_host
from fileshare.net.tcp import ListenError
from fileshare.node import Node, load_identity, open_node, read_daemon_addrs
from fileshare.protocols.identify import IdentifyService
from fileshare.protocols.ping import PingService, open_ping

from .common import common_options, emit, options

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


async def _run_daemon(listen: tuple[Multiaddr, ...], peers: tuple[Multiaddr, ...]) -> None:
    opts = options()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_node(opts.repo) as node:
            if listen:
                await node.host.listen(listen)
            else:
                await _listen_defaults(node)
            for addr in node.full_addrs():
                emit({"addr": str(addr)}, str(addr))
            node.write_daemon_info()
            try:
                for peer in peers:
                    node.nursery.start_soon(node.connect, peer)
                async for signum in signals:
                    log.info("received %s, shutting down", signal.Signals(signum).name)
                    break
            finally:
                node.remove_daemon_info()


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
    help="Peer multiaddr to dial at start (repeatable).",
)
@common_options
def daemon(listen: tuple[Multiaddr, ...], peers: tuple[Multiaddr, ...]) -> None:
    """Run a node until SIGINT/SIGTERM; prints one full multiaddr per line once listening."""
    for addr in listen:
        if not addrs.is_tcp(addr) or addrs.split_peer(addr)[1] is not None:
            raise click.BadParameter(
                f"{addr}: expected /ip4|ip6/<host>/tcp/<port>", param_hint="--listen"
            )
    trio.run(_run_daemon, listen, peers)


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


COMMANDS: list[click.Command] = [daemon, id_command, ping_command]
