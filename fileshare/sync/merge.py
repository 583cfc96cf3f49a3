"""Pure sync decisions: fold a scan into the local index, and plan the merge of a remote snapshot.

The local index is a ``Snapshot`` (author = this node, no root): every path with its version
vector, tombstones included. ``record_scan`` bumps this node's counter for each changed or vanished
path. ``plan_merge`` compares each remote entry's version with the local one:

- remote NEWER: fetch it (or delete the local file for a tombstone); a fetch of content some local
  path already has names that path as ``source`` (a rename or copy needs no transfer);
- remote OLDER or EQUAL: nothing;
- CONCURRENT: equal content merges the versions; a change beats a deletion; two different
  contents are a conflict: both are kept, the winner (later mtime, then higher PeerId) under the
  name and the loser as ``name.sync-conflict-YYYYMMDD-HHMMSS-<peer>.ext`` (UTC of the loser's
  mtime, last 7 characters of its modifier's PeerId), so every node picks the same names.

Actions carry a ``key`` (the index path they serve); ``commit`` records the index updates of the
keys whose actions all succeeded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from ..content.cid import CID
from ..identity.peerid import PeerId
from ..limits import SYNC_MAX_NAME_BYTES
from .snapshot import Entry, Snapshot
from .version import Order, Version


@dataclass(frozen=True, slots=True)
class LocalFile:
    """A stable file found by a scan."""

    path: str
    cid: CID
    size: int
    mtime_ns: int
    mode: int
    tsize: int


@dataclass(frozen=True, slots=True)
class Fetch:
    """Write ``entry``'s content at ``path``; ``expect`` is what must be on disk there first."""

    key: str
    path: str
    entry: Entry
    expect: Entry | None
    source: str | None = None  # a local path already holding the same content


@dataclass(frozen=True, slots=True)
class Move:
    """Rename the local file ``src`` (as ``expect`` says it is) to ``dst`` (a conflict copy)."""

    key: str
    src: str
    dst: str
    expect: Entry


@dataclass(frozen=True, slots=True)
class Delete:
    """Move the local file at ``path`` (as ``expect`` says it is) to the trash."""

    key: str
    path: str
    expect: Entry


@dataclass(frozen=True, slots=True)
class Conflict:
    path: str
    conflict_path: str
    winner: PeerId
    loser: PeerId
    remote_won: bool


@dataclass(frozen=True, slots=True)
class Plan:
    moves: tuple[Move, ...] = ()
    deletes: tuple[Delete, ...] = ()
    fetches: tuple[Fetch, ...] = ()
    conflicts: tuple[Conflict, ...] = ()
    updates: tuple[Entry, ...] = ()  # index entries to record once their key's actions succeed
    remote_version: Version = field(default_factory=Version)
    rejected: str | None = None  # why the snapshot was ignored, if it was

    @property
    def keys(self) -> set[str]:
        keys = {a.key for a in self.moves} | {a.key for a in self.deletes}
        return keys | {a.key for a in self.fetches}

    @property
    def empty(self) -> bool:
        return not (self.moves or self.deletes or self.fetches or self.updates)

    def claimed_bytes(self) -> int:
        """File bytes the fetches will write (a fetch with a local source included)."""
        return sum(f.entry.size for f in self.fetches)


# --- local changes ---
def record_scan(
    index: Snapshot,
    files: Mapping[str, LocalFile],
    me: PeerId,
    *,
    keep: Callable[[str], bool] = lambda _p: False,
    now_ns: int | None = None,
) -> Snapshot:
    """The index after a scan found ``files``; ``index`` itself when nothing changed.

    A live path absent from ``files`` becomes a tombstone unless ``keep(path)`` (a file still being
    written, an ignored or unreadable one).
    """
    counter = start = index.version.get(me)
    entries = index.by_path()
    now = time.time_ns() if now_ns is None else now_ns
    for path, f in files.items():
        old = entries.get(path)
        if old is not None and old.cid == f.cid and old.mode == f.mode:
            continue
        counter += 1
        base = old.version if old is not None else Version()
        entries[path] = Entry(
            path, f.cid, f.size, f.mtime_ns, f.mode, f.tsize, me, base.with_counter(me, counter)
        )
    for path, old in list(entries.items()):
        if old.deleted or path in files or keep(path):
            continue
        counter += 1
        entries[path] = Entry(path, None, 0, now, 0, 0, me, old.version.with_counter(me, counter))
    if counter == start:
        return index
    return replace(
        index,
        author=me,
        version=index.version.with_counter(me, counter),
        entries=tuple(sorted(entries.values(), key=_path_key)),
        root=None,
    )


def _path_key(e: Entry) -> bytes:
    return e.path.encode("utf-8")


# --- conflicts ---
def short_id(peer: PeerId) -> str:
    """The last 7 characters of the PeerId's base58 text (the start is the same for all Ed25519)."""
    return str(peer)[-7:]


def conflict_name(path: str, mtime_ns: int, peer: PeerId) -> str:
    """Syncthing's ``name.sync-conflict-YYYYMMDD-HHMMSS-<id>.ext`` for ``path`` (UTC)."""
    head, _, name = path.rpartition("/")
    dot = name.rfind(".")
    stem, ext = (name[:dot], name[dot:]) if dot > 0 else (name, "")
    secs = max(0, mtime_ns // 1_000_000_000)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(min(secs, 253402300799)))
    tag = f".sync-conflict-{stamp}-{short_id(peer)}{ext}"
    room = SYNC_MAX_NAME_BYTES - len(tag.encode("utf-8"))
    if room < 1:
        tag = f".sync-conflict-{stamp}-{short_id(peer)}"
        room = SYNC_MAX_NAME_BYTES - len(tag)
    stem = stem.encode("utf-8")[:room].decode("utf-8", "ignore") or "_"
    return f"{head}/{stem}{tag}" if head else f"{stem}{tag}"


def _winner(a: Entry, b: Entry) -> Entry:
    """The deterministic winner of two conflicting versions: later mtime, then higher PeerId."""
    ka = (a.mtime_ns, a.modified_by.bytes, a.cid.encode() if a.cid else b"")
    kb = (b.mtime_ns, b.modified_by.bytes, b.cid.encode() if b.cid else b"")
    return a if ka >= kb else b


# --- merging a remote snapshot ---
def plan_merge(
    index: Snapshot,
    remote: Snapshot,
    me: PeerId,
    *,
    writers: Iterable[PeerId] | None = None,
    ignored: Callable[[str], bool] = lambda _p: False,
) -> Plan:
    """What to do to bring the folder up to date with ``remote`` (see the module docstring)."""
    if writers is not None and remote.author not in set(writers):
        return Plan(rejected=f"{remote.author} is not an allowed writer of this folder")
    if remote.folder != index.folder:
        return Plan(rejected="snapshot is for another folder")
    if remote.author == me:
        return Plan(rejected="own snapshot")
    local = index.by_path()
    moves: list[Move] = []
    deletes: list[Delete] = []
    fetches: list[Fetch] = []
    conflicts: list[Conflict] = []
    updates: list[Entry] = []
    for r in remote.entries:
        if ignored(r.path):
            continue
        lo = local.get(r.path)
        order = r.version.compare(lo.version if lo is not None else Version())
        if order in (Order.OLDER, Order.EQUAL):
            continue
        if order == Order.NEWER or lo is None:
            if lo is None or lo.deleted:
                if not r.deleted:
                    fetches.append(Fetch(r.path, r.path, r, None))
            elif r.deleted:
                deletes.append(Delete(r.path, r.path, lo))
            elif r.cid != lo.cid:
                fetches.append(Fetch(r.path, r.path, r, lo))
            updates.append(r)
            continue
        merged = r.version.merge(lo.version)
        if r.deleted or lo.deleted or r.cid == lo.cid:
            if lo.deleted and not r.deleted:  # a change beats a deletion
                fetches.append(Fetch(r.path, r.path, r, None))
                updates.append(replace(r, version=merged))
            elif r.deleted and not lo.deleted:
                updates.append(replace(lo, version=merged))
            else:
                updates.append(replace(_winner(lo, r), version=merged))
            continue
        win = _winner(lo, r)
        lose = r if win is lo else lo
        cpath = conflict_name(r.path, lose.mtime_ns, lose.modified_by)
        if win is r:
            moves.append(Move(r.path, r.path, cpath, lo))
            fetches.append(Fetch(r.path, r.path, r, None))
        else:
            fetches.append(Fetch(r.path, cpath, r, None))
        conflicts.append(Conflict(r.path, cpath, win.modified_by, lose.modified_by, win is r))
        updates.append(replace(win, version=merged))
    return Plan(
        tuple(moves),
        tuple(deletes),
        tuple(_with_sources(fetches, deletes, local)),
        tuple(conflicts),
        tuple(updates),
        remote.version,
    )


def _with_sources(
    fetches: list[Fetch], deletes: list[Delete], local: Mapping[str, Entry]
) -> list[Fetch]:
    """Give each fetch a local path with the same content: preferably one being deleted (a
    rename: each such path serves one fetch), else any live local path (a copy)."""
    deleting: dict[CID, list[str]] = {}
    for d in deletes:
        if d.expect.cid is not None:
            deleting.setdefault(d.expect.cid, []).append(d.path)
    having: dict[CID, str] = {}
    for e in local.values():
        if e.cid is not None:
            having.setdefault(e.cid, e.path)
    out: list[Fetch] = []
    for f in fetches:
        cid = f.entry.cid
        assert cid is not None
        if deleting.get(cid):
            out.append(replace(f, source=deleting[cid].pop(0)))
        elif cid in having:
            out.append(replace(f, source=having[cid]))
        else:
            out.append(f)
    return out


def commit(index: Snapshot, plan: Plan, done: Iterable[str]) -> Snapshot:
    """The index after applying ``plan``, where the keys in ``done`` succeeded.

    Updates without actions always apply. The remote folder vector is merged in only when every
    key succeeded, so a later snapshot is compared in full again otherwise.
    """
    ok = set(done)
    pending = plan.keys - ok
    entries = index.by_path()
    version = index.version
    for e in plan.updates:
        if e.path in pending:
            continue
        entries[e.path] = e
        version = version.merge(e.version)
    if not pending:
        version = version.merge(plan.remote_version)
    return replace(
        index, version=version, entries=tuple(sorted(entries.values(), key=_path_key)), root=None
    )
