"""Folder snapshots: a UnixFS directory DAG of the files plus signed metadata about them.

The directory DAG (``build_tree``) lets any IPFS tool fetch the snapshot root and get the tree. The
metadata carries what UnixFS does not: versions, mtimes, modes and tombstones. It is a hand-written
protobuf, canonical (fields in number order, entries sorted by path bytes, version vectors by peer
bytes, defaults written) so that decoding re-encodes and refuses any other byte form::

    message Snapshot {
      uint32 format = 1;            // 1
      bytes folder = 2;             // folder id
      bytes author = 3;             // PeerId (multihash bytes)
      repeated Counter version = 4; // folder version vector
      bytes root = 5;               // CID of the UnixFS directory (absent in a saved local index)
      uint64 created = 6;           // unix seconds (informational)
      repeated Entry entries = 7;
    }
    message Counter { bytes peer = 1; uint64 counter = 2; }
    message Entry {
      string path = 1; bytes cid = 2 /* absent: tombstone */; uint64 size = 3; int64 mtime_ns = 4;
      uint32 mode = 5; uint64 tsize = 6; bytes modified_by = 7; repeated Counter version = 8;
      bool deleted = 9 /* written only when true */;
    }
    message Signed { bytes body = 1; bytes key = 2 /* PublicKey, optional */; bytes signature = 3; }

The signature is the author's over ``SIGNING_PREFIX || body``. Decoding raises only ``DecodeError``;
``accept_snapshot`` then checks signature, folder, writer set and that the root matches the entries.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..content.blockstore import Blockstore
from ..content.builder import Block
from ..content.cid import BLAKE3, CID, DAG_PB, DIGEST_SIZES, RAW
from ..content.dagpb import PBLink, decode_node, encode_node
from ..content.hamt import HAMT_SHARD_THRESHOLD, build_hamt
from ..content.unixfs import directory_node
from ..errors import DecodeError, FileshareError
from ..identity.keys import PrivateKey, PublicKey
from ..identity.peerid import PeerId
from ..limits import (
    MAX_LINKS_PER_NODE,
    SYNC_MAX_ENTRIES,
    SYNC_MAX_FILE_SIZE,
    SYNC_MAX_SNAPSHOT_BYTES,
    SYNC_MAX_VERSION_PEERS,
)
from ..wire.protobuf import LEN, VARINT, FieldValue, Writer, iter_fields, to_int64
from .paths import check_relpath
from .version import Version

FORMAT = 1
SIGNING_PREFIX = b"fileshare-sync-snapshot/1:"
MAX_FOLDER_ID_BYTES = 64
MAX_SIGNATURE_BYTES = 1024
MAX_TSIZE = 1 << 62
_MAX_MODE = 0o7777
_INT64 = (-(1 << 63), (1 << 63) - 1)


class SnapshotRejected(FileshareError):
    """A well-formed snapshot we do not accept: bad signature, other folder, not a writer, ..."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One path in a snapshot: a file (``cid`` set) or a tombstone (``cid`` None, ``deleted``)."""

    path: str
    cid: CID | None
    size: int
    mtime_ns: int
    mode: int
    tsize: int
    modified_by: PeerId
    version: Version

    @property
    def deleted(self) -> bool:
        return self.cid is None


@dataclass(frozen=True, slots=True)
class Snapshot:
    folder: bytes
    author: PeerId
    version: Version
    entries: tuple[Entry, ...] = ()
    root: CID | None = None
    created: int = 0

    def by_path(self) -> dict[str, Entry]:
        return {e.path: e for e in self.entries}


@dataclass(frozen=True, slots=True)
class SignedSnapshot:
    body: bytes
    signature: bytes
    key: PublicKey | None
    snapshot: Snapshot = field(compare=False)


# --- encoding ---
def _counters(w: Writer, fnum: int, version: Version) -> None:
    for peer, n in version.counters:
        w.bytes(fnum, Writer().bytes(1, peer.bytes).uint(2, n).finish())


def _encode_entry(e: Entry) -> bytes:
    w = Writer().string(1, e.path)
    if e.cid is not None:
        w.bytes(2, e.cid.encode())
    w.uint(3, e.size).uint(4, e.mtime_ns).uint(5, e.mode).uint(6, e.tsize)
    w.bytes(7, e.modified_by.bytes)
    _counters(w, 8, e.version)
    if e.cid is None:
        w.bool(9, True)
    return w.finish()


def encode_snapshot(s: Snapshot) -> bytes:
    """Canonical bytes of ``s`` (entries are sorted here by path bytes)."""
    w = Writer().uint(1, FORMAT).bytes(2, s.folder).bytes(3, s.author.bytes)
    _counters(w, 4, s.version)
    if s.root is not None:
        w.bytes(5, s.root.encode())
    w.uint(6, s.created)
    for e in sorted(s.entries, key=lambda e: e.path.encode("utf-8")):
        w.bytes(7, _encode_entry(e))
    return w.finish()


# --- decoding ---
def _bytes(wire: int, value: FieldValue, what: str) -> bytes:
    if wire != LEN or isinstance(value, int):
        raise DecodeError(f"snapshot: {what} must be length-delimited")
    return bytes(value)


def _uint(wire: int, value: FieldValue, what: str) -> int:
    if wire != VARINT or not isinstance(value, int):
        raise DecodeError(f"snapshot: {what} must be a varint")
    return value


def _decode_counter(data: bytes) -> tuple[PeerId, int]:
    peer: PeerId | None = None
    n = 0
    for fnum, wire, value in iter_fields(data):
        if fnum == 1:
            peer = PeerId.from_bytes(_bytes(wire, value, "counter peer"))
        elif fnum == 2:
            n = _uint(wire, value, "counter")
        else:
            raise DecodeError(f"snapshot: unknown counter field {fnum}")
    if peer is None or n <= 0:
        raise DecodeError("snapshot: counter without a peer or with zero count")
    return peer, n


def _decode_version(raw: list[bytes]) -> Version:
    if len(raw) > SYNC_MAX_VERSION_PEERS:
        raise DecodeError(f"snapshot: version vector over {SYNC_MAX_VERSION_PEERS} peers")
    return Version.of([_decode_counter(r) for r in raw])


def _decode_entry(data: bytes) -> Entry:
    path: str | None = None
    cid: CID | None = None
    ints = {3: 0, 4: 0, 5: 0, 6: 0}
    modified_by: PeerId | None = None
    counters: list[bytes] = []
    deleted = False
    for fnum, wire, value in iter_fields(data):
        if fnum == 1:
            try:
                path = _bytes(wire, value, "path").decode("utf-8")
            except UnicodeDecodeError:
                raise DecodeError("snapshot: path is not valid UTF-8") from None
        elif fnum == 2:
            cid = CID.decode(_bytes(wire, value, "cid"))
            if cid.codec not in (RAW, DAG_PB):
                raise DecodeError(f"snapshot: file CID {cid} is not raw or dag-pb")
        elif fnum in ints:
            ints[fnum] = _uint(wire, value, f"entry field {fnum}")
        elif fnum == 7:
            modified_by = PeerId.from_bytes(_bytes(wire, value, "modified_by"))
        elif fnum == 8:
            counters.append(_bytes(wire, value, "entry version"))
        elif fnum == 9:
            deleted = _uint(wire, value, "deleted") == 1
        else:
            raise DecodeError(f"snapshot: unknown entry field {fnum}")
    if path is None or modified_by is None:
        raise DecodeError("snapshot: entry without a path or modifier")
    check_relpath(path)
    size, mtime, mode, tsize = ints[3], to_int64(ints[4]), ints[5], ints[6]
    if deleted == (cid is not None):
        raise DecodeError(f"snapshot: {path!r} must have exactly one of a CID and a tombstone")
    if size > SYNC_MAX_FILE_SIZE:
        raise DecodeError(f"snapshot: {path!r} claims an implausible size of {size} bytes")
    if tsize > MAX_TSIZE or mode > _MAX_MODE:
        raise DecodeError(f"snapshot: {path!r} has an out-of-range tsize or mode")
    if deleted and (size or tsize):
        raise DecodeError(f"snapshot: tombstone {path!r} with a size")
    version = _decode_version(counters)
    if not version.counters:
        raise DecodeError(f"snapshot: {path!r} without a version")
    return Entry(path, cid, size, mtime, mode, tsize, modified_by, version)


def decode_snapshot(data: bytes | bytearray | memoryview) -> Snapshot:
    """Decode canonical snapshot bytes strictly; raises only ``DecodeError``."""
    if len(data) > SYNC_MAX_SNAPSHOT_BYTES:
        raise DecodeError(f"snapshot of {len(data)} bytes exceeds {SYNC_MAX_SNAPSHOT_BYTES}")
    raw = bytes(data)
    fmt = created = 0
    folder: bytes | None = None
    author: PeerId | None = None
    root: CID | None = None
    counters: list[bytes] = []
    entries: list[Entry] = []
    for fnum, wire, value in iter_fields(raw):
        if fnum == 1:
            fmt = _uint(wire, value, "format")
        elif fnum == 2:
            folder = _bytes(wire, value, "folder")
        elif fnum == 3:
            author = PeerId.from_bytes(_bytes(wire, value, "author"))
        elif fnum == 4:
            counters.append(_bytes(wire, value, "version"))
        elif fnum == 5:
            root = CID.decode(_bytes(wire, value, "root"))
        elif fnum == 6:
            created = _uint(wire, value, "created")
        elif fnum == 7:
            if len(entries) >= SYNC_MAX_ENTRIES:
                raise DecodeError(f"snapshot: more than {SYNC_MAX_ENTRIES} entries")
            entries.append(_decode_entry(_bytes(wire, value, "entry")))
        else:
            raise DecodeError(f"snapshot: unknown field {fnum}")
    if fmt != FORMAT:
        raise DecodeError(f"snapshot: unsupported format {fmt}")
    if folder is None or not 0 < len(folder) <= MAX_FOLDER_ID_BYTES or author is None:
        raise DecodeError("snapshot: missing or bad folder id or author")
    _check_tree(entries)
    snap = Snapshot(folder, author, _decode_version(counters), tuple(entries), root, created)
    if encode_snapshot(snap) != raw:
        raise DecodeError("snapshot: not in canonical form")
    return snap


def _check_tree(entries: list[Entry]) -> None:
    """Paths unique; no live file where another live entry needs a directory."""
    paths = {e.path for e in entries}
    if len(paths) != len(entries):
        raise DecodeError("snapshot: duplicate path")
    live = {e.path for e in entries if not e.deleted}
    for p in live:
        parts = p.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in live:
                raise DecodeError(f"snapshot: {p!r} lies under a file")


# --- signing ---
def _encode_signed(body: bytes, key: PublicKey | None, signature: bytes) -> bytes:
    w = Writer().bytes(1, body)
    if key is not None:
        w.bytes(2, key.to_protobuf())
    return w.bytes(3, signature).finish()


def sign_snapshot(snapshot: Snapshot, key: PrivateKey) -> bytes:
    """The signed envelope of ``snapshot``; its author must be ``key``'s PeerId."""
    public = key.public_key()
    if not snapshot.author.matches(public):
        raise ValueError("the snapshot's author is not the signing key's PeerId")
    body = encode_snapshot(snapshot)
    embedded = snapshot.author.public_key()
    carried = None if embedded == public else public
    return _encode_signed(body, carried, key.sign(SIGNING_PREFIX + body))


def decode_signed(data: bytes | bytearray | memoryview) -> SignedSnapshot:
    """Decode a signed envelope and its snapshot (signature NOT checked); only ``DecodeError``."""
    if len(data) > SYNC_MAX_SNAPSHOT_BYTES + 4096:
        raise DecodeError("signed snapshot too large")
    raw = bytes(data)
    body: bytes | None = None
    key: PublicKey | None = None
    sig: bytes | None = None
    last = 0
    for fnum, wire, value in iter_fields(raw):
        if fnum <= last or fnum > 3:
            raise DecodeError("signed snapshot: fields duplicated, out of order or unknown")
        last = fnum
        b = _bytes(wire, value, f"signed field {fnum}")
        if fnum == 1:
            body = b
        elif fnum == 2:
            key = PublicKey.from_protobuf(b)
        else:
            sig = b
    if body is None or sig is None or not 0 < len(sig) <= MAX_SIGNATURE_BYTES:
        raise DecodeError("signed snapshot: missing body or signature")
    snap = decode_snapshot(body)
    if _encode_signed(body, key, sig) != raw:
        raise DecodeError("signed snapshot: not in canonical form")
    return SignedSnapshot(body, sig, key, snap)


def accept_snapshot(signed: SignedSnapshot, folder: bytes, writers: Iterable[PeerId]) -> Snapshot:
    """The snapshot if it is for ``folder``, by an allowed writer, correctly signed, and its root
    matches its entries; else ``SnapshotRejected``."""
    return accept_snapshot_tree(signed, folder, writers)[0]


def accept_snapshot_tree(
    signed: SignedSnapshot, folder: bytes, writers: Iterable[PeerId]
) -> tuple[Snapshot, list[Block]]:
    """``accept_snapshot``, also returning the directory blocks built to check the root."""
    snap = signed.snapshot
    if snap.folder != folder:
        raise SnapshotRejected("snapshot is for another folder")
    if snap.author not in set(writers):
        raise SnapshotRejected(f"snapshot author {snap.author} may not write to this folder")
    key = signed.key if signed.key is not None else snap.author.public_key()
    if key is None or not snap.author.matches(key):
        raise SnapshotRejected("snapshot key does not match its author")
    if not key.verify(SIGNING_PREFIX + signed.body, signed.signature):
        raise SnapshotRejected("snapshot signature is invalid")
    if snap.root is None:
        raise SnapshotRejected("snapshot without a root CID")
    if snap.root.codec != DAG_PB or snap.root.hash_code not in DIGEST_SIZES:
        raise SnapshotRejected("snapshot root is not a dag-pb directory")
    try:
        root, blocks = build_tree(snap.entries, snap.root.hash_code)
    except ValueError as exc:
        raise SnapshotRejected(f"snapshot tree cannot be built: {exc}") from None
    if root != snap.root:
        raise SnapshotRejected("snapshot root CID does not match its entries")
    return snap, blocks


# --- the UnixFS directory DAG ---
_Tree = dict[str, "_Tree | Entry"]


def build_tree(entries: Iterable[Entry], hash_code: int = BLAKE3) -> tuple[CID, list[Block]]:
    """The UnixFS directory DAG of the live entries: root CID and the directory blocks (root last).

    Each file link's Tsize is the entry's ``tsize``; a directory's is its block size plus its
    children's. A directory whose plain node would pass ``HAMT_SHARD_THRESHOLD`` bytes (or the
    dag-pb link limit) is a sharded HAMT directory, as other UnixFS importers make them.
    Raises ``ValueError`` for names a directory cannot hold.
    """
    tree: _Tree = {}
    for e in entries:
        if e.deleted:
            continue
        *dirs, name = e.path.split("/")
        node = tree
        for d in dirs:
            sub = node.setdefault(d, {})
            if isinstance(sub, Entry):
                raise ValueError(f"{e.path!r} lies under the file {sub.path!r}")
            node = sub
        node[name] = e
    blocks: list[Block] = []
    root, _ = _build_dir(tree, hash_code, blocks)
    return root, blocks


def _build_dir(tree: _Tree, hash_code: int, out: list[Block]) -> tuple[CID, int]:
    links: list[PBLink] = []
    total = 0
    for name, child in tree.items():
        if isinstance(child, Entry):
            assert child.cid is not None
            cid, tsize = child.cid, child.tsize
        else:
            cid, tsize = _build_dir(child, hash_code, out)
        links.append(PBLink(cid, name, tsize))
        total += tsize
    if len(links) <= MAX_LINKS_PER_NODE:
        data = encode_node(directory_node(links))
        if len(data) <= HAMT_SHARD_THRESHOLD:
            cid = CID.from_data(DAG_PB, data, hash_code)
            out.append(Block(cid, data))
            return cid, len(data) + total
    cid, tsize, shards = build_hamt(links, hash_code)
    out.extend(shards)
    return cid, tsize


def file_tsize(store: Blockstore, cid: CID) -> int:
    """Total bytes of the DAG under a stored file root (its Tsize in a parent link)."""
    return root_tsize(cid, store.get_sync(cid))


def root_tsize(cid: CID, data: bytes) -> int:
    """Total bytes of the DAG under a file root with block bytes ``data`` (raw: its length)."""
    if cid.codec == RAW:
        return len(data)
    return len(data) + sum(link.tsize or 0 for link in decode_node(data).links)
