"""Sync folders run by the daemon: one ``SyncService`` per folder in the node's nursery.

``SyncManager`` implements the control API's ``SyncControl``: ``start_folder`` creates, joins or
loads a folder's identity (``DIR/.fileshare/folder.json``, as `fileshare sync DIR` does) and runs
it under its own cancel scope; ``stop_folder`` cancels it; ``list_folders`` reports them. Running
folders are remembered in ``<repo>/sync-folders.json`` (path, folder id, peers to dial), so a
restarted daemon resumes them with ``resume()``. Peers to dial (an invite's, ``--peer``) are redialled
every ``SYNC_REDIAL_INTERVAL`` while not connected.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from multiaddr import Multiaddr

from ..errors import DecodeError, FileshareError, NotFound
from ..limits import SYNC_MAX_INVITE_ADDRS, SYNC_REDIAL_INTERVAL
from ..net import addrs as _addrs
from ..node import Node
from ..sync import FolderConfig, SyncFolder, format_invite
from ..sync.folder import FolderConflict, parse_folder_id, resolve_config
from ..sync.network import SyncService, folder_topic, rendezvous_key

log = logging.getLogger("fileshare.daemon.sync")

STATE_FILE = "sync-folders.json"
STOP_TIMEOUT = 15.0  # seconds a stopping folder may take to wind down
Json = dict[str, Any]


@dataclass(eq=False)
class _Folder:
    path: Path
    config: FolderConfig
    peers: list[Multiaddr]
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)
    service: SyncService | None = None
    state: str = "starting"
    error: str = ""
    started: float = field(default_factory=time.time)
    last_published: Json | None = None
    last_received: Json | None = None

    def on_event(self, event: Json) -> None:
        kind = event.get("event")
        if kind == "ready":
            self.state = "running"
        elif kind == "published":
            self.last_published = {"at": time.time(), "snapshot": event.get("snapshot"),
                                   "root": event.get("root"), "files": event.get("files")}  # fmt: skip
        elif kind == "received":
            self.last_received = {"at": time.time(), "from": event.get("from"),
                                  "counts": event.get("counts")}  # fmt: skip
        if kind in ("rejected", "error"):
            log.warning("sync %s: %s", self.config.id_text, event)
        else:
            log.info("sync %s: %s", self.config.id_text, kind)

    def to_json(self, node: Node) -> Json:
        service = self.service
        return {
            "folder": self.config.id_text,
            "path": str(self.path),
            "writers": sorted(str(p) for p in self.config.writers),
            "writer": self.config.may_write(node.peer_id),
            "state": self.state,
            "error": self.error or None,
            "started": self.started,
            "peers": len(node.pubsub.topic_peers(folder_topic(self.config.folder))),
            "last_published": self.last_published,
            "last_received": self.last_received,
            "stats": dict(service.stats) if service is not None else {},
        }


class SyncManager:
    """The daemon's sync folders (see the module docstring). Methods run in the node's trio run."""

    def __init__(self, node: Node, state_path: Path | None = None) -> None:
        self.node = node
        self.state_path = state_path or node.repo.path / STATE_FILE
        self._folders: dict[str, _Folder] = {}  # by folder id text

    # --- SyncControl ---
    def list_folders(self) -> list[Json]:
        return [f.to_json(self.node) for f in self._folders.values()]

    async def start_folder(
        self,
        path: Path,
        *,
        join: str | None = None,
        folder: str | None = None,
        allow: Sequence[str] = (),
        peers: Sequence[Multiaddr] = (),
    ) -> Json:
        """Create, join or load the folder at ``path`` and run it; answers with its invite."""
        path.mkdir(parents=True, exist_ok=True)
        path = path.resolve()
        config, created, invited = resolve_config(
            path, self.node.peer_id, join=join, folder=folder, allow=allow
        )
        running = self._folders.get(config.id_text)
        if running is not None and running.path != path:
            raise FolderConflict(f"folder {config.id_text} already syncs {running.path}")
        for other in self._folders.values():
            if other.path == path and other.config.folder != config.folder:
                raise FolderConflict(f"{path} already syncs folder {other.config.id_text}")
        dial = _merge_addrs([*invited, *peers], running.peers if running else [])
        if running is None or running.state == "failed":
            entry = _Folder(path, config, dial)
            self._folders[config.id_text] = entry
            self.node.nursery.start_soon(self._run, entry)
        else:
            running.peers = dial
        self._save()
        full = self.node.full_addrs()
        return {
            "folder": config.id_text,
            "path": str(path),
            "invite": format_invite(config, full),
            "created": created,
            "already_running": running is not None and running.state != "failed",
            "peer_id": str(self.node.peer_id),
            "addrs": [str(a) for a in full],
        }

    async def stop_folder(self, folder: str) -> Json:
        """Stop syncing ``folder`` (its id, or its directory) and forget it."""
        entry = self._find(folder)
        entry.scope.cancel()
        with trio.move_on_after(STOP_TIMEOUT):
            await entry.done.wait()
        self._folders.pop(entry.config.id_text, None)
        self._save()
        return {"folder": entry.config.id_text, "path": str(entry.path), "stopped": True}

    # --- lifecycle ---
    async def resume(self) -> None:
        """Start every folder remembered in the state file (failures are listed, not raised)."""
        for item in self._load():
            path = Path(item["path"])
            peers = _parse_addrs(item.get("peers", []))
            try:
                await self.start_folder(path, folder=item.get("folder") or None, peers=peers)
            except (FileshareError, OSError) as exc:
                log.warning("cannot resume sync of %s: %s", path, exc)
                try:
                    config = FolderConfig(parse_folder_id(str(item.get("folder"))), frozenset())
                except DecodeError:
                    continue
                entry = _Folder(path, config, peers, state="failed", error=str(exc))
                entry.done.set()
                self._folders[config.id_text] = entry

    def _find(self, folder: str) -> _Folder:
        entry = self._folders.get(folder)
        if entry is None:
            wanted = str(Path(folder).expanduser().resolve())  # as start_folder stored it
            entry = next((f for f in self._folders.values() if str(f.path) == wanted), None)
        if entry is None:
            raise NotFound(f"no sync folder {folder!r} runs on this daemon")
        return entry

    async def _run(self, entry: _Folder) -> None:
        topic = folder_topic(entry.config.folder)
        try:
            with entry.scope:
                sync_folder = SyncFolder(
                    entry.path, self.node.repo, self.node.host.key, entry.config
                )
                try:
                    entry.service = SyncService(self.node, sync_folder, on_event=entry.on_event)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(entry.service.run)
                        nursery.start_soon(self._redial, entry)
                finally:
                    sync_folder.close()
            if entry.state != "failed":
                entry.state = "stopped"
        except Exception as exc:  # one folder's failure must not take the daemon down
            log.exception("sync of %s failed", entry.path)
            entry.state, entry.error = "failed", str(exc) or type(exc).__name__
        finally:
            if self._folders.get(entry.config.id_text) in (entry, None):
                self.node.pubsub.unsubscribe(topic)
                self.node.pubsub.set_validator(topic, None)
                self.node.kad.stop_providing(rendezvous_key(entry.config.folder))
            entry.done.set()

    async def _redial(self, entry: _Folder) -> None:
        while True:
            connected = {c.remote_peer for c in self.node.host.connections}
            for addr in list(entry.peers):
                peer = _addrs.split_peer(addr)[1]
                if peer != self.node.peer_id and (peer is None or peer not in connected):
                    self.node.nursery.start_soon(self._dial, addr)
            await trio.sleep(SYNC_REDIAL_INTERVAL)

    async def _dial(self, addr: Multiaddr) -> None:
        with trio.move_on_after(SYNC_REDIAL_INTERVAL * 2):
            try:
                await self.node.host.dial(addr)
            except (FileshareError, OSError) as exc:
                log.debug("could not dial folder peer %s: %s", addr, exc)

    # --- state file ---
    def _save(self) -> None:
        doc = [
            {"path": str(f.path), "folder": f.config.id_text, "peers": [str(a) for a in f.peers]}
            for f in self._folders.values()
        ]
        tmp = self.state_path.with_name(f".{self.state_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.state_path)

    def _load(self) -> list[Json]:
        try:
            doc = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", self.state_path, exc)
            return []
        items = doc if isinstance(doc, list) else []
        return [i for i in items if isinstance(i, dict) and isinstance(i.get("path"), str)]


def _parse_addrs(texts: object) -> list[Multiaddr]:
    out: list[Multiaddr] = []
    for text in texts if isinstance(texts, list) else []:
        try:
            out.append(_addrs.parse(str(text)))
        except DecodeError:
            continue
    return out


def _merge_addrs(new: Sequence[Multiaddr], old: Sequence[Multiaddr]) -> list[Multiaddr]:
    merged: list[Multiaddr] = []
    for a in [*new, *old]:
        if a not in merged:
            merged.append(a)
    return merged[:SYNC_MAX_INVITE_ADDRS]


__all__ = ["STATE_FILE", "FolderConflict", "SyncManager", "resolve_config"]
