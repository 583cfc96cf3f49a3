"""Daemon commands: status, stat; and the helpers other commands use to reach a daemon."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import trio
from multiaddr import Multiaddr

from fileshare.daemon import DEFAULT_API, DEFAULT_GATEWAY, parse_hostport
from fileshare.daemon.api import stat_cid
from fileshare.daemon.client import DaemonClient, find_daemon
from fileshare.errors import DecodeError, FileshareError, NotFound
from fileshare.identity.peerid import PeerId
from fileshare.net import addrs
from fileshare.node import DAEMON_INFO_FILE, load_identity
from fileshare.protocols.pubsub.announce import ANNOUNCE_TOPIC
from fileshare.repo import Repo

from .common import common_options, emit, options
from .config import load_config


@dataclass(frozen=True, slots=True)
class DaemonOptions:
    """How the daemon runs its HTTP servers and announcement topics."""

    api: tuple[str, int] = ("127.0.0.1", 0)
    gateway: tuple[str, int] | None = ("127.0.0.1", 0)
    topics: tuple[str, ...] = (ANNOUNCE_TOPIC,)
    send_rate: int | None = None
    stall_timeout: float | None = None


def _multiaddrs(texts: tuple[str, ...], what: str) -> tuple[Multiaddr, ...]:
    out = []
    for text in texts:
        try:
            out.append(addrs.parse(text))
        except DecodeError as exc:
            raise FileshareError(f"config {what}: {text!r}: {exc}") from None
    return tuple(out)


def daemon_settings(
    listen: tuple[Multiaddr, ...],
    peers: tuple[Multiaddr, ...],
    api: str | None,
    gateway: str | None,
    max_rate: str | None,
) -> tuple[tuple[Multiaddr, ...], tuple[Multiaddr, ...], DaemonOptions]:
    """Flags, else the config file / environment, else the defaults."""
    from .commands_content import parse_size

    config = load_config()
    listen = listen or _multiaddrs(config.listen, "listen")
    peers = peers + _multiaddrs(config.bootstrap, "bootstrap")
    api_text = api or config.api or DEFAULT_API
    gateway_text = gateway or config.gateway or DEFAULT_GATEWAY
    rate_text = max_rate or config.max_rate
    try:
        rate = parse_size(rate_text) if rate_text else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--max-rate'") from None
    servers = DaemonOptions(
        api=parse_hostport(api_text),
        gateway=None if gateway_text.lower() == "off" else parse_hostport(gateway_text),
        topics=config.topics or (ANNOUNCE_TOPIC,),
        send_rate=rate or None,
        stall_timeout=config.stall_timeout,
    )
    return listen, peers, servers


def find_daemon_pid(repo: Path) -> int | None:
    """The pid of a live daemon (or `share`) on ``repo``, from its daemon.json."""
    try:
        pid = int(json.loads((repo / DAEMON_INFO_FILE).read_text(encoding="utf-8"))["pid"])
        os.kill(pid, 0)
    except PermissionError:
        return pid
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid


def running_daemon() -> DaemonClient | None:
    """The control API of the daemon on this command's repository, if one runs."""
    return find_daemon(options().repo)


def _show(data: dict[str, Any], keys: Sequence[str]) -> str:
    lines = []
    for key in keys:
        value = data.get(key)
        if isinstance(value, list):
            value = " ".join(str(v) for v in value) or "-"
        lines.append(f"{key + ':':<14}{'-' if value is None else value}")
    return "\n".join(lines)


@click.command("status")
@common_options
def status_command() -> None:
    """Show the daemon's state: PeerId, addresses, API and gateway URLs, peers, store.

    Without a running daemon it reports "running: False" and the repository's contents."""
    client = running_daemon()
    if client is not None:
        data = client.call("GET", "/status")
        keys = [
            "running",
            "pid",
            "peer_id",
            "api",
            "gateway",
            "addresses",
            "connections",
            "dht_peers",
            "pins",
            "shared",
            "store_blocks",
            "store_bytes",
            "uptime",
            "repo",
        ]
        emit(data, _show(data, keys))
        return
    repo_path = options().repo
    peer = PeerId.from_public_key(load_identity(repo_path).public_key())
    with Repo.open(repo_path) as repo:
        pins = repo.pins()
        stats = repo.blocks.stats_sync()
    data = {
        "running": False,
        "repo": str(repo_path),
        "peer_id": str(peer),
        "api": None,
        "gateway": None,
        "addresses": [],
        "pins": len(pins),
        "shared": sum(1 for p in pins if p.shared),
        "store_blocks": stats.blocks,
        "store_bytes": stats.bytes,
    }
    emit(
        data,
        _show(
            data, ["running", "peer_id", "pins", "shared", "store_blocks", "store_bytes", "repo"]
        ),
    )


@click.command("stat")
@click.argument("cid")
@common_options
def stat_command(cid: str) -> None:
    """Show what the local store holds of CID: kind, size, blocks, missing blocks, pin.

    Exits 1 when the CID's root block is not in the store."""
    from .commands_content import parse_cid

    root = parse_cid(cid)
    client = running_daemon()
    if client is not None:
        data = client.call("GET", "/stat", params={"cid": str(root)})
    else:
        with Repo.open(options().repo) as repo:
            data = trio.run(trio.to_thread.run_sync, stat_cid, repo, root)
    if not data.get("present") and not options().json:
        raise NotFound(
            f"{root} is not in the local store" + (" (pinned)" if data.get("pinned") else "")
        )
    keys = [
        k
        for k in (
            "cid",
            "codec",
            "hash",
            "present",
            "kind",
            "filesize",
            "block_size",
            "links",
            "blocks_local",
            "missing_count",
            "complete",
            "pinned",
            "name",
            "shared",
        )
        if k in data
    ]
    emit(data, _show(data, keys))
    if not data.get("present"):
        raise NotFound(f"{root} is not in the local store")


COMMANDS: list[click.Command] = [status_command, stat_command]
