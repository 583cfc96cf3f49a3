"""Routing table persistence in the repository's SQLite (table ``dht_peers``).

Rows are ``(peer id bytes, packed addrs, last seen as wall-clock time)``; addresses are packed as
uvarint-length-prefixed binary multiaddrs. On load, peers enter the table directly (they were DHT
servers when saved); one that no longer answers is dropped at its first failed request.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from ...errors import FileshareError, ProtocolError
from ...limits import (
    KAD_MAX_ADDR_BYTES,
    KAD_MAX_MESSAGE,
    KAD_MAX_PERSISTED_PEERS,
    KAD_MAX_TABLE_ADDRS,
)
from ...net.peerstore import PeerStore
from ...repo import Repo
from ...wire.protobuf import LengthPrefixedDecoder, length_prefixed
from .lookups import multiaddrs, peer_id_of
from .routing import AddStatus, RoutingTable

log = logging.getLogger("fileshare.protocols.kad")

Row = tuple[bytes, bytes, float]


def pack_addrs(addrs: Iterable[bytes]) -> bytes:
    return b"".join(length_prefixed(a) for a in addrs)


def unpack_addrs(data: bytes) -> list[bytes]:
    """Inverse of ``pack_addrs``; a damaged value yields what could be read."""
    try:
        return LengthPrefixedDecoder(KAD_MAX_MESSAGE).feed(data)
    except ProtocolError:  # an over-long length or varint
        return []


def table_rows(table: RoutingTable, wall_offset: float) -> list[Row]:
    """The table as rows, most recently seen first (``wall_offset`` = wall clock - table clock)."""
    rows = [(e.peer_id, pack_addrs(e.addrs), e.last_seen + wall_offset) for e in table.peers()]
    rows.sort(key=lambda r: r[2], reverse=True)
    return rows[:KAD_MAX_PERSISTED_PEERS]


def save_table(repo: Repo, rows: list[Row]) -> None:
    """Replace the saved table with ``rows`` (an empty table is not saved: keep the last one)."""
    if not rows:
        return
    try:
        repo.save_dht_peers(rows)
    except FileshareError as exc:
        log.warning("could not save the DHT routing table: %s", exc)


def load_table(repo: Repo, table: RoutingTable, peerstore: PeerStore, now: float) -> int:
    """Add the saved peers to ``table`` (and their addresses to ``peerstore``); how many entered."""
    try:
        rows = repo.dht_peers(KAD_MAX_PERSISTED_PEERS)
    except FileshareError as exc:
        log.warning("could not load the DHT routing table: %s", exc)
        return 0
    loaded = 0
    for raw_id, packed, _last_seen in rows:
        pid = peer_id_of(raw_id)
        if pid is None or raw_id == table.local_id:
            continue
        addrs = [a for a in unpack_addrs(packed) if len(a) <= KAD_MAX_ADDR_BYTES]
        addrs = addrs[:KAD_MAX_TABLE_ADDRS]
        found = multiaddrs(addrs)
        if not found:
            continue
        peerstore.add_addrs(pid, found)
        if table.try_add(raw_id, addrs, now).status == AddStatus.ADDED:
            loaded += 1
    if loaded:
        log.info("kad: loaded %d routing table peers from the repository", loaded)
    return loaded
