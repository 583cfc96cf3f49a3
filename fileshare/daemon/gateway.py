"""A read-only trustless HTTP gateway over the local block store (non-recursive).

``GET|HEAD /ipfs/<cid>[/<path>]`` (spec: trustless-gateway.md):

- ``?format=raw`` / ``Accept: application/vnd.ipld.raw``: the block's bytes (no path allowed).
- ``?format=car`` / ``Accept: application/vnd.ipld.car``: a CARv1 stream, ``order=dfs``,
  ``dups=n`` unless ``dups=y`` is asked for; ``dag-scope=block|entity|all`` (default all); the
  blocks that resolve ``<path>`` come first. ``entity-bytes`` is refused (400).
- otherwise (no Accept, ``*/*``, a browser): the bytes of a UnixFS file, streamed with a
  Content-Length, honouring a single ``Range``; ``?filename=`` names it, ``?download=true``
  makes it an attachment.

Only blocks already in the store are served: a missing root is 404 (412 with
``Cache-Control: only-if-cached``); a block missing in the middle of a CAR cuts the stream.
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from urllib.parse import quote

import trio

from ..content.cid import CID, DAG_PB, IDENTITY
from ..content.dagpb import PBLink, decode_node
from ..content.hamt import hamt_lookup
from ..content.reader import GetBlock, Node, decode_block
from ..errors import DecodeError, FileshareError, NotFound
from ..limits import GATEWAY_MAX_PATH_SEGMENTS, MAX_DAG_DEPTH
from ..repo import Repo
from .car import encode_header, encode_section
from .http import HTTPError, Request, Response, Write, json_response

RAW_TYPE = "application/vnd.ipld.raw"
CAR_TYPE = "application/vnd.ipld.car"
IMMUTABLE = "public, max-age=29030400, immutable"
_UNSUPPORTED_PREFIXES = ("application/vnd.ipld.", "application/vnd.ipfs.")
_UNSUPPORTED_TYPES = {"application/x-tar", "application/json", "application/cbor"}
_SCRIPTABLE = {"text/html", "image/svg+xml", "application/xhtml+xml", "text/xml", "application/xml"}


@dataclass(frozen=True, slots=True)
class Want:
    """What a request asks for: ``kind`` is "raw", "car" or "file"."""

    kind: str
    dups: bool = False  # CAR: send duplicate blocks


def _split_params(text: str) -> tuple[str, dict[str, str]]:
    parts = [p.strip() for p in text.split(";")]
    params: dict[str, str] = {}
    for p in parts[1:]:
        key, _, value = p.partition("=")
        params[key.strip().lower()] = value.strip().strip('"').lower()
    return parts[0].lower(), params


def _car_variant(params: dict[str, str]) -> Want | None:
    """The CAR variant for Accept/query parameters, or None when we cannot produce it."""
    if params.get("version", "1") != "1":
        return None
    if params.get("order", "dfs") not in ("dfs", "unk", ""):
        return None
    dups = params.get("dups", "n")
    if dups not in ("y", "n", ""):
        return None
    return Want("car", dups=dups == "y")


def negotiate(query: dict[str, str], accept: str) -> Want:
    """Pick the response type from ``format`` (which wins) or ``Accept``; 400/406 otherwise."""
    fmt = query.get("format")
    if fmt is not None:
        if fmt == "raw":
            return Want("raw")
        if fmt == "car":
            params = {k[4:]: v.lower() for k, v in query.items() if k.startswith("car-")}
            want = _car_variant(params)
            if want is None:
                raise HTTPError(400, "unsupported CAR variant: version=1, order=dfs, dups=y|n")
            return want
        raise HTTPError(400, f"unsupported format {fmt!r}: use format=raw or format=car")
    if not accept.strip():
        return Want("file")
    choices: list[tuple[float, int, str, dict[str, str]]] = []
    for i, item in enumerate(accept.split(",")):
        if not item.strip():
            continue
        media, params = _split_params(item)
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 0.0
        if q > 0:
            choices.append((-q, i, media, params))
    for _q, _i, media, params in sorted(choices):
        if media == RAW_TYPE:
            return Want("raw")
        if media == CAR_TYPE:
            car = _car_variant(params)
            if car is not None:
                car_params = {k[4:]: v for k, v in params.items() if k.startswith("car-")}
                return _car_variant({**params, **car_params}) or car
            continue
        if media.startswith(_UNSUPPORTED_PREFIXES) or media in _UNSUPPORTED_TYPES:
            continue
        return Want("file")
    raise HTTPError(406, f"none of the accepted types can be served; try {RAW_TYPE} or {CAR_TYPE}")


class Gateway:
    """The request handler; ``await gateway.handle(request)``."""

    def __init__(self, repo: Repo) -> None:
        self.repo = repo

    async def handle(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            raise HTTPError(
                405, "the gateway is read-only: GET and HEAD only", [("Allow", "GET, HEAD")]
            )
        if request.path in ("/", ""):
            return json_response(
                {"gateway": "fileshare trustless gateway", "usage": "/ipfs/<cid>?format=raw|car"}
            )
        if request.path.startswith("/ipns/"):
            raise HTTPError(501, "IPNS is not supported by this gateway")
        if not request.path.startswith("/ipfs/"):
            raise HTTPError(404, "not found: use /ipfs/<cid>")
        segments = request.path[len("/ipfs/") :].split("/")
        try:
            root = CID.parse(segments[0])
        except DecodeError as exc:
            raise HTTPError(400, f"invalid CID {segments[0][:100]!r}: {exc}") from None
        names = [s for s in segments[1:] if s]
        if len(names) > GATEWAY_MAX_PATH_SEGMENTS:
            raise HTTPError(400, f"path longer than {GATEWAY_MAX_PATH_SEGMENTS} segments")
        if any(n in (".", "..") for n in names):
            raise HTTPError(400, "path segments '.' and '..' are not allowed")
        if "entity-bytes" in request.query:
            raise HTTPError(400, "entity-bytes is not supported by this gateway")
        scope = request.query.get("dag-scope", "all")
        if scope not in ("block", "entity", "all"):
            raise HTTPError(400, "dag-scope must be block, entity or all")
        want = negotiate(request.query, request.header("accept"))
        if want.kind == "raw" and names:
            raise HTTPError(400, "a raw block request takes no path: GET /ipfs/<cid>?format=raw")
        if not await self._has(root):
            status = 412 if "only-if-cached" in request.header("cache-control") else 404
            raise HTTPError(status, f"block {root} is not in this node's store")
        ipfs_path = quote("/ipfs/" + "/".join([str(root), *names]), safe="/")
        common = [
            ("X-Ipfs-Path", ipfs_path),
            ("Vary", "Accept"),
            ("X-Content-Type-Options", "nosniff"),
            ("Cache-Control", IMMUTABLE),
        ]
        if want.kind == "raw":
            return await self._raw(request, root, common)
        path_cids, target = await self._resolve(root, names)
        common.append(("X-Ipfs-Roots", ",".join(str(c) for c in [*path_cids, target])))
        if want.kind == "car":
            return self._car(request, root, path_cids, target, scope, want.dups, common)
        return await self._file(request, target, names, common)

    # --- blocks ---
    async def _has(self, cid: CID) -> bool:
        return cid.hash_code == IDENTITY or await self.repo.blocks.has(cid)

    async def _get(self, cid: CID) -> bytes:
        if cid.hash_code == IDENTITY:
            return cid.digest
        try:
            return await self.repo.blocks.get(cid)
        except NotFound:
            raise HTTPError(404, f"block {cid} is not in this node's store") from None

    async def _resolve(self, root: CID, names: list[str]) -> tuple[list[CID], CID]:
        """Follow ``names`` through UnixFS directories: (CIDs passed through, terminus CID)."""
        passed: list[CID] = []
        cid = root
        for name in names:
            block = await self._get(cid)
            try:
                node = decode_block(cid, block)
            except DecodeError as exc:
                raise HTTPError(400, f"cannot traverse {cid}: {exc}") from None
            shards: list[CID] = []
            if node.kind == "hamt":
                link, shards = await self._hamt_lookup(cid, block, name)
            elif node.kind == "directory":
                link = next((lk for lk in node.links if lk.name == name), None)
            else:
                raise HTTPError(404, f"{cid} is a {node.kind}: no entry {name!r} in it")
            if link is None:
                raise HTTPError(404, f"no entry {name!r} in directory {cid}")
            passed += [cid, *shards]
            cid = link.hash
        if names and not await self._has(cid):
            raise HTTPError(404, f"block {cid} is not in this node's store")
        return passed, cid

    async def _hamt_lookup(
        self, root: CID, block: bytes, name: str
    ) -> tuple[PBLink | None, list[CID]]:
        """``name`` in the sharded directory ``root`` (its shards read in a worker thread)."""
        blocks = self.repo.blocks

        def load(cid: CID) -> bytes:
            return cid.digest if cid.hash_code == IDENTITY else blocks.get_sync(cid)

        try:
            return await trio.to_thread.run_sync(hamt_lookup, block, name, load)
        except NotFound as exc:
            raise HTTPError(404, str(exc)) from None
        except DecodeError as exc:
            raise HTTPError(400, f"cannot traverse {root}: {exc}") from None

    # --- raw ---
    async def _raw(self, request: Request, root: CID, common: list[tuple[str, str]]) -> Response:
        etag = f'"{root}.raw"'
        headers = [*common, ("Etag", etag)]
        if _not_modified(request, etag):
            return Response(304, headers)
        data = await self._get(root)
        headers += [
            ("Content-Type", RAW_TYPE),
            ("Content-Disposition", f'attachment; filename="{root}.bin"'),
        ]
        if "format" not in request.query:
            headers.append(("Content-Location", f"{request.target.partition('?')[0]}?format=raw"))
        return Response(200, headers, data)

    # --- CAR ---
    def _car(
        self,
        request: Request,
        root: CID,
        path_cids: list[CID],
        target: CID,
        scope: str,
        dups: bool,
        common: list[tuple[str, str]],
    ) -> Response:
        dups_text = "y" if dups else "n"
        etag = f'"{root}.car.{scope}.{dups_text}.{len(path_cids)}"'
        headers = [*common, ("Etag", etag)]
        if _not_modified(request, etag):
            return Response(304, headers)
        headers += [
            ("Content-Type", f"{CAR_TYPE}; version=1; order=dfs; dups={dups_text}"),
            ("Content-Disposition", f'attachment; filename="{root}.car"'),
        ]
        if "format" not in request.query:
            headers.append(("Content-Location", f"{request.target.partition('?')[0]}?format=car"))

        async def stream(write: Write) -> None:
            await write(encode_header([root]))
            sent: set[bytes] = set()
            for cid in path_cids:
                await self._emit(write, cid, await self._get(cid), sent, dups)
            async with aclosing(self._walk(target, scope)) as blocks:
                async for cid, data in blocks:
                    await self._emit(write, cid, data, sent, dups)

        return Response(200, headers, stream=stream)

    async def _emit(
        self, write: Write, cid: CID, data: bytes, sent: set[bytes], dups: bool
    ) -> None:
        if cid.hash_code == IDENTITY:
            return  # identity blocks are never sent (the spec forbids them in CARs)
        if not dups:
            if cid.multihash in sent:
                return
            sent.add(cid.multihash)
        await write(encode_section(cid, data))

    async def _shards(self, root: bytes) -> AsyncGenerator[tuple[CID, bytes], None]:
        """The shards under a HAMT root block, depth-first pre-order (entries are not followed;
        one level per byte of the 64-bit hash at most)."""
        stack = [iter(_shard_links(root))]
        while stack:
            cid = next(stack[-1], None)
            if cid is None:
                stack.pop()
                continue
            child = await self._get(cid)
            yield cid, child
            if len(stack) < 8:
                stack.append(iter(_shard_links(child)))

    async def _walk(self, root: CID, scope: str) -> AsyncGenerator[tuple[CID, bytes], None]:
        """Depth-first, pre-order: the blocks of the DAG under ``root`` that ``scope`` covers."""
        data = await self._get(root)
        yield root, data
        if scope == "block":
            return
        children = _links(root, data)
        if scope == "entity" and root.codec == DAG_PB:
            try:
                kind = decode_block(root, data).kind
            except DecodeError:
                return
            if kind == "hamt":  # a sharded directory's entity: all its shards
                async for item in self._shards(data):
                    yield item
            if kind != "file":
                return  # a plain directory entity is its own block
        stack: list[tuple[list[CID], int, int]] = [(children, 0, 1)]
        while stack:
            links, i, depth = stack[-1]
            if i == len(links):
                stack.pop()
                continue
            stack[-1] = (links, i + 1, depth)
            cid = links[i]
            data = await self._get(cid)
            yield cid, data
            more = _links(cid, data)
            if more:
                if depth >= MAX_DAG_DEPTH:
                    raise DecodeError(f"DAG under {root} is deeper than {MAX_DAG_DEPTH} levels")
                stack.append((more, 0, depth + 1))

    # --- plain file bytes ---
    async def _file(
        self, request: Request, target: CID, names: list[str], common: list[tuple[str, str]]
    ) -> Response:
        try:
            node = decode_block(target, await self._get(target))
        except DecodeError as exc:
            raise HTTPError(
                406, f"{target} is not UnixFS ({exc}); request ?format=raw or car"
            ) from None
        if node.kind not in ("raw", "file"):
            raise HTTPError(
                501,
                f"{target} is a {node.kind}; only files are served as bytes "
                "(request ?format=car for the DAG)",
            )
        etag = f'"{target}"'
        headers = [*common, ("Etag", etag), ("Accept-Ranges", "bytes")]
        if _not_modified(request, etag):  # a CID's bytes never change: no need to walk its DAG
            return Response(304, headers)
        status = await trio.to_thread.run_sync(self.repo.dag_status, [target])
        if status.missing:
            raise HTTPError(
                404, f"block {status.missing[0]} of {target} is not in this node's store"
            )
        if status.corrupt:
            raise HTTPError(500, f"block {status.corrupt[0]} of {target} is corrupt in the store")
        size = node.filesize or 0
        name = request.query.get("filename") or (names[-1] if names else "")
        if not name:
            pin = await trio.to_thread.run_sync(self.repo.get_pin, target)
            name = pin.name if pin is not None else ""
        headers.append(("Content-Type", _content_type(name)))
        if name or request.query.get("download") == "true":
            kind = "attachment" if request.query.get("download") == "true" else "inline"
            headers.append(("Content-Disposition", _disposition(kind, name or str(target))))
        start, end, status_code = 0, size, 200
        wanted = _parse_range(request.header("range"), size)
        if wanted is not None:
            start, end = wanted
            status_code = 206
            headers.append(("Content-Range", f"bytes {start}-{end - 1}/{size}"))

        async def stream(write: Write) -> None:
            async with aclosing(iter_file_range(target, self._get, start, end, node)) as chunks:
                async for chunk in chunks:
                    await write(chunk)

        return Response(status_code, headers, stream=stream, content_length=end - start)


def _links(cid: CID, data: bytes) -> list[CID]:
    """Child CIDs of a dag-pb block (any dag-pb, not only UnixFS); none for other codecs."""
    if cid.codec != DAG_PB:
        return []
    return [link.hash for link in decode_node(data).links]


def _not_modified(request: Request, etag: str) -> bool:
    tags = [t.strip() for t in request.header("if-none-match").split(",")]
    return etag in tags or "*" in tags


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """A single ``Range: bytes=`` as ``(start, end)`` (end exclusive); None: the whole file."""
    header = header.strip()
    if not header:
        return None
    m = _RANGE.match(header.replace(" ", ""))
    if m is None or (not m.group(1) and not m.group(2)):
        return None  # multiple or unknown ranges: RFC 9110 lets us send the whole file
    unsatisfiable = HTTPError(
        416, f"range not satisfiable (size {size})", [("Content-Range", f"bytes */{size}")]
    )
    if not m.group(1):  # suffix: the last N bytes
        n = int(m.group(2))
        if n == 0 or size == 0:
            raise unsatisfiable
        return max(0, size - n), size
    start = int(m.group(1))
    end = int(m.group(2)) + 1 if m.group(2) else size
    if start >= size or end <= start:
        raise unsatisfiable
    return start, min(end, size)


def _content_type(name: str) -> str:
    guessed = mimetypes.guess_type(name)[0] if name else None
    if guessed is None:
        return "application/octet-stream"
    if guessed in _SCRIPTABLE:
        return "text/plain; charset=utf-8"  # never let stored content run script on our origin
    return guessed


def _disposition(kind: str, name: str) -> str:
    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


async def iter_file_range(
    root: CID,
    get_block: GetBlock,
    start: int,
    end: int,
    node: Node | None = None,
) -> AsyncGenerator[bytes, None]:
    """Yield the bytes ``[start, end)`` of the file at ``root``, reading only the blocks needed.

    Each child is checked against its parent's blocksize, as ``reader.iter_file_leaves`` does.
    """
    if node is None:
        node = decode_block(root, await get_block(root))
    async with aclosing(_range(node, 0, start, end, get_block, 0)) as chunks:
        async for chunk in chunks:
            yield chunk


async def _range(
    node: Node, offset: int, start: int, end: int, get_block: GetBlock, depth: int
) -> AsyncGenerator[bytes, None]:
    pos = offset
    if node.data:
        lo, hi = max(start, pos), min(end, pos + len(node.data))
        if lo < hi:
            yield node.data[lo - pos : hi - pos]
        pos += len(node.data)
    for link, size in zip(node.links, node.blocksizes, strict=True):
        if pos >= end:
            return
        if pos + size > start:
            if depth >= MAX_DAG_DEPTH:
                raise DecodeError(f"file DAG deeper than {MAX_DAG_DEPTH} levels")
            child = decode_block(link.hash, await get_block(link.hash))
            if child.kind not in ("raw", "file") or child.filesize != size:
                raise FileshareError(
                    f"file node {node.cid} does not match its child {child.cid}: corrupt DAG"
                )
            async with aclosing(_range(child, pos, start, end, get_block, depth + 1)) as inner:
                async for chunk in inner:
                    yield chunk
        pos += size


__all__ = ["CAR_TYPE", "RAW_TYPE", "Gateway", "Want", "iter_file_range", "negotiate"]


def _shard_links(data: bytes) -> list[CID]:
    """The child-shard links of a HAMT shard block (names of just the two-digit bucket)."""
    try:
        return [lk.hash for lk in decode_node(data).links if len(lk.name or "") == 2]
    except DecodeError:
        return []
