"""The daemon's control API: JSON over HTTP on 127.0.0.1, every call with ``Authorization:
Bearer <token>`` (the token is in ``<repo>/api.token``, mode 0600); otherwise 401.

Endpoints (bodies and answers are JSON objects; errors are ``{"error": message}``):

=====  ====================  =============================================================
GET    /api/v0/id            ``{peer_id, public_key, addresses}``
GET    /api/v0/status        pid, version, uptime, peer id, addresses, api and gateway URLs,
                             connections, DHT table size, pins, store blocks/bytes, sync
GET    /api/v0/peers         ``{peers: [{peer_id, addr, opened_at}]}`` (connected peers)
GET    /api/v0/ls            ``{shares: [pin, ...]}``
GET    /api/v0/stat?cid=CID  what the store holds of CID (see ``stat_cid``)
POST   /api/v0/add           ``{path, share?, name?, hash?, profile?, chunk_size?, progress?}``
POST   /api/v0/fetch         ``{cid, out?, peers?, stall_timeout?, progress?}``
POST   /api/v0/pin           ``{cid, name?}``
POST   /api/v0/unpin         ``{cid}``
POST   /api/v0/gc            ``{}``
GET    /api/v0/sync/list     ``{folders: [{folder, path, writers, state, ...}]}`` (501 without sync)
POST   /api/v0/sync/start    ``{path, join?, folder?, allow?, peers?}``: run a sync folder; answers
                             ``{folder, path, invite, created, peer_id, addrs}``
POST   /api/v0/sync/stop     ``{folder}`` (a folder id or its path)
=====  ====================  =============================================================

``add`` and ``fetch`` with ``"progress": true`` answer ``application/x-ndjson``: progress lines
``{"event": "progress", ...}`` then one ``{"event": "done", ...}`` or
``{"event": "error", "error", "status"}`` line. Status codes: 400 bad request, 401 no or wrong
token, 404 not found, 405 wrong method, 409 corrupt data, 422 could not be done (message says
why), 501 not available, 503 repository busy, 500 a bug.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import trio
from multiaddr import Multiaddr

from ..content.cid import CID, CODEC_NAMES, hash_name_of
from ..content.ingest import import_file
from ..content.layout import DEFAULT_PROFILE, make_layout
from ..content.reader import decode_block
from ..errors import DecodeError, FileshareError, LimitExceeded, NotFound, VerificationError
from ..net import addrs
from ..node import Node
from ..repo import Repo, RepoBusy, pin_cid
from .http import HTTPError, Request, Response, Write, error_response, json_response

log = logging.getLogger("fileshare.daemon.api")

PREFIX = "/api/v0"
Json = dict[str, Any]
Sink = Callable[[Json], None]


class SyncControl(Protocol):
    """What the API needs from a sync service (``fileshare.sync``), when the daemon runs one."""

    def list_folders(self) -> list[Json]: ...

    async def stop_folder(self, folder: str) -> Json: ...

    async def start_folder(
        self,
        path: Path,
        *,
        join: str | None = None,
        folder: str | None = None,
        allow: Sequence[str] = (),
        peers: Sequence[Multiaddr] = (),
    ) -> Json: ...


def status_for(exc: BaseException) -> int:
    """The HTTP status a failure maps to."""
    if isinstance(exc, HTTPError):
        return exc.status
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, LimitExceeded):
        return 413
    if isinstance(exc, DecodeError):
        return 400
    if isinstance(exc, RepoBusy):
        return 503
    if isinstance(exc, VerificationError):
        return 409
    if isinstance(exc, FileshareError | OSError):
        return 422
    return 500


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, FileshareError):
        return f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
    if isinstance(exc, HTTPError):
        return exc.message
    return str(exc) if status_for(exc) != 500 else "internal error (see the daemon's log)"


def _cid(value: Any, what: str = "cid") -> CID:
    if not isinstance(value, str) or not value:
        raise HTTPError(400, f"{what} is required (a CID string)")
    try:
        return CID.parse(value)
    except DecodeError as exc:
        raise HTTPError(400, f"invalid {what}: {exc}") from None


def _str(body: Json, key: str, default: str = "") -> str:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise HTTPError(400, f"{key} must be a string")
    return value


def _abs_path(body: Json, key: str) -> Path:
    text = _str(body, key)
    if not text:
        raise HTTPError(400, f"{key} is required (an absolute path)")
    path = Path(text)
    if not path.is_absolute():
        raise HTTPError(400, f"{key} must be an absolute path (the daemon's cwd is not yours)")
    return path


def stat_cid(repo: Repo, cid: CID) -> Json:
    """What the local store holds of ``cid`` (blocking: call from a thread)."""
    hash_name = hash_name_of(cid.hash_code)
    info: Json = {
        "cid": str(cid),
        "version": cid.version,
        "codec": CODEC_NAMES.get(cid.codec, f"0x{cid.codec:x}"),
        "hash": hash_name or f"0x{cid.hash_code:x}",
        "present": repo.blocks.has_sync(cid),
    }
    if info["present"]:
        try:
            data = repo.blocks.get_sync(cid)
            info["block_size"] = len(data)
            node = decode_block(cid, data)
            info.update(kind=node.kind, filesize=node.filesize, links=len(node.links))
        except VerificationError:
            info["kind"] = "corrupt"
        except DecodeError as exc:
            info.update(kind="unknown", error=str(exc))
        status = repo.dag_status([cid])
        info.update(
            blocks_local=len(status.reachable),
            missing=[str(c) for c in status.missing[:10]],
            missing_count=len(status.missing),
            corrupt=[str(c) for c in status.corrupt[:10]],
            complete=status.complete,
        )
    pin = repo.get_pin(cid)
    info["pinned"] = pin is not None
    if pin is not None:
        info.update(name=pin.name, shared=pin.shared, size=pin.size)
    return info


class Api:
    """Routes control API requests to the node. ``api_url``/``gateway_url`` are set on start."""

    def __init__(self, node: Node, token: str, *, sync: SyncControl | None = None) -> None:
        self.node = node
        self.token = token
        self.sync = sync  # set by the daemon when a sync service runs
        self.started = time.time()
        self.api_url = ""
        self.gateway_url: str | None = None
        self.default_stall_timeout: float | None = None
        get, post = "GET", "POST"
        self.routes: dict[tuple[str, str], Callable[[Request], Awaitable[Response]]] = {
            (get, "/id"): self.id,
            (get, "/status"): self.status,
            (get, "/peers"): self.peers,
            (get, "/ls"): self.ls,
            (get, "/stat"): self.stat,
            (post, "/add"): self.add,
            (post, "/fetch"): self.fetch,
            (post, "/pin"): self.pin,
            (post, "/unpin"): self.unpin,
            (post, "/gc"): self.gc,
            (get, "/sync/list"): self.sync_list,
            (post, "/sync/stop"): self.sync_stop,
            (post, "/sync/start"): self.sync_start,
        }

    @property
    def repo(self) -> Repo:
        return self.node.repo

    async def handle(self, request: Request) -> Response:
        given = request.header("authorization")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self.token.encode()
        ):
            return error_response(
                401,
                "missing or wrong API token (see <repo>/api.token)",
                [("WWW-Authenticate", 'Bearer realm="fileshare"')],
            )
        if not request.path.startswith(PREFIX + "/"):
            raise HTTPError(404, f"no such endpoint {request.path}")
        path = request.path[len(PREFIX) :]
        route = self.routes.get((request.method, path))
        if route is None:
            allowed = [m for (m, p) in self.routes if p == path]
            if allowed:
                raise HTTPError(405, f"{path} takes {allowed[0]}", [("Allow", ", ".join(allowed))])
            raise HTTPError(404, f"no such endpoint {request.path}")
        try:
            return await route(request)
        except (FileshareError, OSError) as exc:
            return error_response(status_for(exc), _message(exc))

    # --- information ---
    async def id(self, request: Request) -> Response:
        public = self.node.host.key.public_key()
        return json_response(
            {
                "peer_id": str(self.node.peer_id),
                "public_key": base64.b64encode(public.to_protobuf()).decode("ascii"),
                "addresses": [str(a) for a in self.node.full_addrs()],
            }
        )

    async def status(self, request: Request) -> Response:
        stats = await self.repo.blocks.stats()
        pins = await trio.to_thread.run_sync(self.repo.pins)
        from .. import __version__

        return json_response(
            {
                "running": True,
                "pid": os.getpid(),
                "version": __version__,
                "uptime": round(time.time() - self.started, 1),
                "repo": str(self.repo.path),
                "peer_id": str(self.node.peer_id),
                "addresses": [str(a) for a in self.node.full_addrs()],
                "api": self.api_url,
                "gateway": self.gateway_url,
                "connections": len(self.node.host.connections),
                "dht_peers": len(self.node.kad.table),
                "pins": len(pins),
                "shared": sum(1 for p in pins if p.shared),
                "store_blocks": stats.blocks,
                "store_bytes": stats.bytes,
                "sync": self.sync.list_folders() if self.sync is not None else None,
            }
        )

    async def peers(self, request: Request) -> Response:
        rows = [
            {"peer_id": str(c.remote_peer), "addr": str(c.remote_addr), "opened_at": c.opened_at}
            for c in self.node.host.connections
        ]
        return json_response({"peers": rows})

    async def ls(self, request: Request) -> Response:
        pins = await trio.to_thread.run_sync(self.repo.pins)
        return json_response({"shares": [p.to_json() for p in pins]})

    async def stat(self, request: Request) -> Response:
        cid = _cid(request.query.get("cid"))
        return json_response(await trio.to_thread.run_sync(stat_cid, self.repo, cid))

    # --- content ---
    async def add(self, request: Request) -> Response:
        body = request.json()
        path = _abs_path(body, "path")
        try:
            chunk = body.get("chunk_size")
            if chunk is not None and not isinstance(chunk, int):
                raise ValueError("chunk_size must be an integer")
            layout = make_layout(
                _str(body, "profile", DEFAULT_PROFILE), _str(body, "hash", "blake3"), chunk
            )
        except (ValueError, KeyError) as exc:
            raise HTTPError(400, f"bad layout: {exc}") from None
        name = _str(body, "name") or None
        share = bool(body.get("share", False))

        async def run(sink: Sink | None) -> Json:
            def progress(done: int, total: int) -> None:
                if sink is not None:
                    sink({"event": "progress", "bytes_done": done, "bytes_total": total})

            if share:
                result = await self.node.share(path, layout, name=name, progress=progress)
            else:
                result = await import_file(self.repo, path, layout, progress, name=name)
                self.node.bitswap.blocks_added([result.root])
            return {
                "cid": str(result.root),
                "name": name or path.name,
                "size": result.size,
                "blocks": result.block_count,
                "shared": share,
            }

        return await _job(bool(body.get("progress")), run)

    async def fetch(self, request: Request) -> Response:
        body = request.json()
        root = _cid(body.get("cid"))
        out = _abs_path(body, "out") if body.get("out") else None
        peer_texts = body.get("peers") or []
        if not isinstance(peer_texts, list):
            raise HTTPError(400, "peers must be a list of multiaddrs")
        try:
            peers = [addrs.parse(str(p)) for p in peer_texts]
        except DecodeError as exc:
            raise HTTPError(400, f"invalid peer multiaddr: {exc}") from None
        options: Json = {"peers": peers}
        stall = body.get("stall_timeout", self.default_stall_timeout)
        if stall is not None:
            if not isinstance(stall, int | float) or not 0 < stall <= 86400:
                raise HTTPError(400, "stall_timeout must be a number of seconds in (0, 86400]")
            options["stall_timeout"] = float(stall)

        async def run(sink: Sink | None) -> Json:
            if sink is not None:
                options["on_progress"] = lambda p: sink({"event": "progress", **p.to_json()})
            result = await self.node.fetch(root, out, **options)
            return {"cid": str(root), **result.to_json()}

        return await _job(bool(body.get("progress")), run)

    async def pin(self, request: Request) -> Response:
        body = request.json()
        root = _cid(body.get("cid"))
        pin = await trio.to_thread.run_sync(pin_cid, self.repo, root, _str(body, "name"))
        return json_response({"cid": str(root), "pinned": True, "pin": pin.to_json()})

    async def unpin(self, request: Request) -> Response:
        root = _cid(request.json().get("cid"))
        if not await trio.to_thread.run_sync(self.repo.unpin, root):
            raise HTTPError(404, f"{root} is not pinned")
        return json_response({"cid": str(root), "pinned": False})

    async def gc(self, request: Request) -> Response:
        result = await trio.to_thread.run_sync(self.repo.gc)
        return json_response(result.to_json())

    # --- sync (wired when the daemon runs a sync service) ---
    async def sync_list(self, request: Request) -> Response:
        if self.sync is None:
            raise HTTPError(501, "this daemon runs no sync service")
        return json_response({"folders": self.sync.list_folders()})

    async def sync_stop(self, request: Request) -> Response:
        if self.sync is None:
            raise HTTPError(501, "this daemon runs no sync service")
        folder = _str(request.json(), "folder")
        if not folder:
            raise HTTPError(400, "folder is required")
        return json_response(await self.sync.stop_folder(folder))

    async def sync_start(self, request: Request) -> Response:
        if self.sync is None:
            raise HTTPError(501, "this daemon runs no sync service")
        body = request.json()
        path = _abs_path(body, "path")
        lists: dict[str, list[str]] = {}
        for key in ("allow", "peers"):
            value = body.get(key) or []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise HTTPError(400, f"{key} must be a list of strings")
            lists[key] = value
        try:
            peers = [addrs.parse(p) for p in lists["peers"]]
        except DecodeError as exc:
            raise HTTPError(400, f"invalid peer multiaddr: {exc}") from None
        answer = await self.sync.start_folder(
            path,
            join=_str(body, "join") or None,
            folder=_str(body, "folder") or None,
            allow=lists["allow"],
            peers=peers,
        )
        return json_response(answer)


async def _job(progress: bool, run: Callable[[Sink | None], Awaitable[Json]]) -> Response:
    """Run ``run`` for a JSON answer, or stream its progress and outcome as NDJSON lines."""
    if not progress:
        return json_response(await run(None))

    async def stream(write: Write) -> None:
        send, receive = trio.open_memory_channel[Json](64)

        def sink(event: Json) -> None:
            # a slow reader misses some progress lines, never the outcome
            with contextlib.suppress(trio.WouldBlock):
                send.send_nowait(event)

        async def runner() -> None:
            async with send:
                try:
                    final: Json = {"event": "done", **await run(sink)}
                except (FileshareError, OSError) as exc:
                    final = {"event": "error", "error": _message(exc), "status": status_for(exc)}
                except Exception:
                    log.exception("API job failed")
                    final = {"event": "error", "error": "internal error", "status": 500}
                await send.send(final)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner)
            async for event in receive:
                await write(json.dumps(event, separators=(",", ":")).encode() + b"\n")

    return Response(200, [("Content-Type", "application/x-ndjson")], stream=stream)
