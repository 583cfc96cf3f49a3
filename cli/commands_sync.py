"""`fileshare sync DIR`: keep a folder the same on several nodes.

The first run creates the folder identity (``DIR/.fileshare/folder.json``) and every run prints a
one-line invite; ``fileshare sync DIR2 --join INVITE`` joins it. Addresses to dial at start
(``--peer``, the invite's) are remembered in ``DIR/.fileshare/peers.json`` and the listen port in
``DIR/.fileshare/node.json``, so a restarted node finds its folder peers again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import trio
from multiaddr import Multiaddr

from fileshare.errors import DecodeError, FileshareError
from fileshare.identity.peerid import PeerId
from fileshare.net import addrs
from fileshare.net.tcp import ListenError
from fileshare.node import Node, load_identity, open_node
from fileshare.sync import FolderConfig, SyncFolder, format_invite
from fileshare.sync.folder import resolve_config
from fileshare.sync.network import SyncService
from fileshare.sync.paths import RESERVED_DIR

from .commands_content import fetch_progress
from .commands_net import MULTIADDR, check_listen
from .common import common_options, emit, is_terminal, options, wait_for_stop

log = logging.getLogger("fileshare.cli")

PEERS_FILE = f"{RESERVED_DIR}/peers.json"
NODE_FILE = f"{RESERVED_DIR}/node.json"
MAX_SAVED_PEERS = 32


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_json(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _saved_peers(directory: Path) -> list[Multiaddr]:
    doc = _read_json(directory / PEERS_FILE)
    out: list[Multiaddr] = []
    for text in doc if isinstance(doc, list) else []:
        try:
            out.append(addrs.parse(str(text)))
        except DecodeError:
            continue
    return out


def _remember_peers(directory: Path, new: list[Multiaddr]) -> list[Multiaddr]:
    """Saved peers plus ``new`` (most recent first, bounded); returns them all."""
    merged: list[Multiaddr] = []
    for a in [*new, *_saved_peers(directory)]:
        if a not in merged:
            merged.append(a)
    merged = merged[:MAX_SAVED_PEERS]
    if new:
        _write_json(directory / PEERS_FILE, [str(a) for a in merged])
    return merged


async def _listen(node: Node, listen: tuple[Multiaddr, ...], directory: Path) -> None:
    if listen:
        await node.host.listen(list(listen))
        return
    doc = _read_json(directory / NODE_FILE)
    port = doc.get("port") if isinstance(doc, dict) else None
    port = port if isinstance(port, int) and 0 < port < 65536 else 0
    try:
        bound = await node.host.listen([addrs.parse(f"/ip4/0.0.0.0/tcp/{port}")])
    except ListenError:
        bound = await node.host.listen([addrs.parse("/ip4/0.0.0.0/tcp/0")])
    chosen = int(bound[0].value_for_protocol("tcp"))
    if chosen != port:
        _write_json(directory / NODE_FILE, {"port": chosen})


def _text(event: dict[str, Any]) -> str:
    kind = event["event"]
    if kind == "ready":
        mode = "writer" if event["writer"] else "read-only (not an allowed writer)"
        return f"watching {event['folder']}: {event['files']} files, {mode}"
    if kind == "published":
        return f"shared snapshot of {event['files']} files ({event['snapshot']})"
    if kind == "received":
        lines = [f"+ {p}" for p in event["written"]]
        lines += [f"~ {a} -> {b}" for a, b in event["renamed"]]
        lines += [f"- {p}" for p in event["trashed"]]
        lines += [f"! conflict copy {p}" for p in event["conflicts"]]
        lines += [f"? {p}: {why}" for p, why in event["skipped"].items()]
        head = f"from {event['from']}: {event['file_bytes_fetched']} bytes fetched"
        return "\n".join([head, *lines])
    if kind == "rejected":
        return f"rejected from {event['from']}: {event['reason']}"
    if kind == "error":
        return f"error syncing from {event['from']}: {event['error']}"
    return json.dumps(event)


def _print_event(event: dict[str, Any]) -> None:
    emit(event, _text(event))


async def _run_sync(
    directory: Path,
    config: FolderConfig,
    created: bool,
    listen: tuple[Multiaddr, ...],
    peers: list[Multiaddr],
    mdns: bool,
) -> None:
    opts = options()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_node(opts.repo, mdns=mdns) as node:
            await _listen(node, listen, directory)
            full = node.full_addrs()
            invite = format_invite(config, full)
            emit(
                {"event": "invite", "invite": invite, "folder": config.id_text,
                 "peer_id": str(node.peer_id), "created": created,
                 "addrs": [str(a) for a in full]},
                invite,
            )  # fmt: skip
            for addr in peers:
                node.nursery.start_soon(node.connect, addr)
            folder = SyncFolder(directory, node.repo, node.host.key, config)
            service = SyncService(node, folder, on_event=_print_event)
            bar = fetch_progress("syncing") if is_terminal() else contextlib.nullcontext(None)
            try:
                with bar as update:
                    if update is not None:
                        show = update
                        # a fetch of a whole snapshot tree has no single file size: show its bytes
                        service.on_fetch_progress = lambda p: show(
                            p
                            if p.file_size is not None
                            else replace(p, file_bytes_done=p.bytes_done)
                        )
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(service.run)
                        await wait_for_stop(signals)
                        nursery.cancel_scope.cancel()
            finally:
                folder.close()
            if opts.json:
                emit({"event": "stats", **service.stats})


@click.command("sync")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--folder", "folder_id", default=None, help="Folder id to use when creating.")
@click.option(
    "--allow",
    multiple=True,
    metavar="PEERID",
    help="Another peer allowed to write to the folder (repeatable; the creator always is).",
)
@click.option("--join", "invite", default=None, metavar="INVITE", help="Join a folder by invite.")
@click.option("--listen", multiple=True, type=MULTIADDR, help="Listen multiaddr (repeatable).")
@click.option("--peer", "peers", multiple=True, type=MULTIADDR, help="Peer to dial (repeatable).")
@click.option("--no-mdns", is_flag=True, default=False, help="No LAN discovery with mDNS.")
@common_options
def sync_command(
    directory: Path,
    folder_id: str | None,
    allow: tuple[str, ...],
    invite: str | None,
    listen: tuple[Multiaddr, ...],
    peers: tuple[Multiaddr, ...],
    no_mdns: bool,
) -> None:
    """Keep DIR the same on every node of its folder until SIGINT/SIGTERM.

    The first run creates the folder and prints a one-line invite (every run prints it); run
    `fileshare sync DIR2 --join INVITE` on another node. Only allowed writers' changes are
    applied by the others; a node not allowed to write only receives.
    """
    check_listen(listen)
    directory.mkdir(parents=True, exist_ok=True)
    directory = directory.resolve()
    if _hand_off(directory, folder_id, allow, invite, listen, peers, no_mdns):
        return  # the daemon on this repository syncs it
    key = load_identity(options().repo)
    me = PeerId.from_public_key(key.public_key())
    try:
        config, created, invited = resolve_config(
            directory, me, join=invite, folder=folder_id, allow=allow
        )
    except DecodeError as exc:
        raise click.BadParameter(str(exc)) from None
    remembered = _remember_peers(directory, [*invited, *peers])
    trio.run(_run_sync, directory, config, created, listen, remembered, not no_mdns)


# --- through the daemon: `sync DIR` hands off, `sync list`, `sync stop` ---------------------------


def _hand_off(
    directory: Path,
    folder_id: str | None,
    allow: tuple[str, ...],
    invite: str | None,
    listen: tuple[Multiaddr, ...],
    peers: tuple[Multiaddr, ...],
    no_mdns: bool,
) -> bool:
    """Give the folder to the daemon running on this repository, if any; True if it took it."""
    from .commands_daemon import running_daemon

    client = running_daemon()
    if client is None:
        return False
    body: dict[str, Any] = {
        "path": str(directory),
        "join": invite,
        "folder": folder_id,
        "allow": list(allow),
        "peers": [str(a) for a in _remember_peers(directory, list(peers))],
    }
    done = client.call("POST", "/sync/start", body)
    emit({"event": "invite", "daemon": client.pid, **done}, str(done["invite"]))
    if not options().json:
        ignored = " (--listen and --no-mdns do not apply: the daemon's own settings do)"
        click.echo(
            f"the daemon (pid {client.pid}) syncs {directory} as folder {done['folder']}"
            f"{ignored if listen or no_mdns else ''}; see `fileshare sync list`,"
            f" stop with `fileshare sync stop {done['folder']}`",
            err=True,
        )
    return True


def _when(doc: Any) -> str:
    if not isinstance(doc, dict) or not doc.get("at"):
        return "-"
    return time.strftime("%H:%M:%S", time.localtime(float(doc["at"])))


@click.command("list")
@common_options
def sync_list_command() -> None:
    """List the folders the daemon on this repository syncs."""
    from .commands_daemon import running_daemon

    client = running_daemon()
    if client is None:
        emit({"daemon": False, "folders": []}, "no daemon runs on this repository")
        return
    folders = client.call("GET", "/sync/list")["folders"]
    lines = []
    for f in folders:
        stats = f.get("stats") or {}
        lines.append(
            f"{f['folder']}  {f['state']:<8} {f['path']}\n"
            f"    {'writer' if f.get('writer') else 'read-only'}, {f.get('peers', 0)} peers,"
            f" published {stats.get('published', 0)} (last {_when(f.get('last_published'))}),"
            f" received {stats.get('received', 0)} (last {_when(f.get('last_received'))})"
            + (f"\n    error: {f['error']}" if f.get("error") else "")
        )
    emit({"daemon": True, "folders": folders}, "\n".join(lines) or "no sync folders")


@click.command("stop")
@click.argument("folder")
@common_options
def sync_stop_command(folder: str) -> None:
    """Stop syncing FOLDER (its id or its directory) in the daemon; the files stay."""
    from .commands_daemon import running_daemon

    client = running_daemon()
    if client is None:
        raise FileshareError("no daemon runs on this repository (an in-process sync stops with ^C)")
    if Path(folder).expanduser().is_dir():  # a directory, not a folder id: send it absolute
        folder = str(Path(folder).expanduser().resolve())  # (the daemon's cwd is not ours)
    done = client.call("POST", "/sync/stop", {"folder": folder})
    emit(done, f"stopped {done['folder']} ({done['path']})")


class SyncGroup(click.Group):
    """`sync DIR ...` is short for `sync run DIR ...`; `sync list`, `sync stop FOLDER`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group("sync", cls=SyncGroup, no_args_is_help=True)
def sync_group() -> None:
    """Keep a folder the same on several nodes: `fileshare sync DIR [OPTIONS]`.

    `fileshare sync DIR` is short for `fileshare sync run DIR` (see `fileshare sync run --help`);
    when `fileshare daemon` runs on the repository it takes the folder over (it prints the invite
    and returns), else the folder syncs in this process until SIGINT/SIGTERM. A directory named
    like a subcommand needs a path: `fileshare sync ./list`.
    """


sync_group.add_command(sync_command, "run")
sync_group.add_command(sync_list_command)
sync_group.add_command(sync_stop_command)

COMMANDS: list[click.Command] = [sync_group]
