"""Sans-io handler for inbound /ipfs/kad/1.0.0 requests (DHT server mode).

``KadServer.handle(remote, request, now)`` returns the response ``Message`` or raises
``ProtocolError`` for an invalid request; the driver then resets the stream without answering, as
the IPFS kad-dht spec asks. ``remote`` is the authenticated peer id of the stream's connection.

- FIND_NODE: the k closest peers in our table (never the requester; ourselves added when the key
  is our own id).
- GET_PROVIDERS: stored providers plus the k closest peers.
- ADD_PROVIDER: key must be a multihash; only provider entries whose id is ``remote`` are stored
  (others are ignored; none matching is an error). Echoes what was stored.
- PUT_VALUE / GET_VALUE: records pass through a ``RecordValidator`` hook; without one every
  PUT_VALUE is refused (the spec rejects unknown record namespaces).
- PING: answered with PING (deprecated, kept for old peers).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from ...errors import ProtocolError
from ...limits import KAD_K, KAD_MAX_RECORDS, KAD_RECORD_TTL
from .messages import Message, MessageType, Peer, Record, is_multihash
from .providers import ProviderStore
from .routing import RoutingTable, kad_key


class RecordValidator(Protocol):
    """Record rules for PUT_VALUE/GET_VALUE (e.g. /pk/ and /ipns/)."""

    def validate(self, key: bytes, value: bytes) -> bool:
        """True if ``value`` is a valid record for ``key``."""
        ...

    def select(self, key: bytes, values: Sequence[bytes]) -> int:
        """Index of the best of several valid values."""
        ...


class RecordStore:
    """PUT_VALUE records with expiry and a total cap."""

    def __init__(self, *, ttl: float = KAD_RECORD_TTL, max_records: int = KAD_MAX_RECORDS) -> None:
        self.ttl = ttl
        self.max_records = max_records
        self._records: dict[bytes, tuple[Record, float]] = {}

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: bytes, now: float) -> Record | None:
        item = self._records.get(key)
        if item is None:
            return None
        if item[1] <= now:
            del self._records[key]
            return None
        return item[0]

    def put(self, record: Record, now: float) -> bool:
        if record.key not in self._records and len(self._records) >= self.max_records:
            self.expire(now)
            if len(self._records) >= self.max_records:
                return False
        self._records[record.key] = (record, now + self.ttl)
        return True

    def expire(self, now: float) -> int:
        dead = [k for k, (_, t) in self._records.items() if t <= now]
        for k in dead:
            del self._records[k]
        return len(dead)


class KadServer:
    """Answers requests from the routing table, provider store and record store."""

    def __init__(
        self,
        local_id: bytes,
        table: RoutingTable,
        providers: ProviderStore,
        *,
        local_addrs: Callable[[], Iterable[bytes]] = tuple,
        records: RecordStore | None = None,
        validator: RecordValidator | None = None,
        k: int = KAD_K,
        key_fn: Callable[[bytes], int] = kad_key,
    ) -> None:
        self.local_id = local_id
        self.local_addrs = local_addrs  # called only when a peer asks for our own key
        self.table = table
        self.providers = providers
        self.records = records if records is not None else RecordStore()
        self.validator = validator
        self.k = k
        self.key_fn = key_fn

    def handle(self, remote: bytes, request: Message, now: float) -> Message:
        t = request.type
        if t == MessageType.PING:
            return Message(MessageType.PING)
        if not request.key:
            raise ProtocolError(f"kad {t.name} request without a key")
        if t == MessageType.FIND_NODE:
            return Message(t, request.key, closer_peers=self._closer(remote, request.key))
        if t == MessageType.GET_PROVIDERS:
            return Message(
                t,
                request.key,
                closer_peers=self._closer(remote, request.key),
                provider_peers=tuple(self.providers.get(request.key, now)),
            )
        if t == MessageType.ADD_PROVIDER:
            return self._add_provider(remote, request, now)
        if t == MessageType.GET_VALUE:
            return Message(
                t,
                request.key,
                record=self._get_record(request.key, now),
                closer_peers=self._closer(remote, request.key),
            )
        return self._put_value(request, now)

    def _closer(self, remote: bytes, key: bytes) -> tuple[Peer, ...]:
        found = [e.info for e in self.table.closest(self.key_fn(key), self.k, exclude=(remote,))]
        if key == self.local_id:
            found.insert(0, Peer(self.local_id, tuple(self.local_addrs())))
        elif key == remote:
            entry = self.table.get(remote)
            if entry is not None:
                found.insert(0, entry.info)
        return tuple(found)

    def _add_provider(self, remote: bytes, request: Message, now: float) -> Message:
        if not is_multihash(request.key):
            raise ProtocolError("ADD_PROVIDER key is not a multihash")
        own = [p for p in request.provider_peers if p.id == remote]
        if not own:
            raise ProtocolError("ADD_PROVIDER names no provider equal to the sender")
        self.providers.add(request.key, remote, own[0].addrs, now)
        return Message(MessageType.ADD_PROVIDER, request.key, provider_peers=(own[0],))

    def _get_record(self, key: bytes, now: float) -> Record | None:
        rec = self.records.get(key, now)
        if rec is None or self.validator is None or not self.validator.validate(key, rec.value):
            return None
        return rec

    def _put_value(self, request: Message, now: float) -> Message:
        rec = request.record
        if rec is None or rec.key != request.key:
            raise ProtocolError("PUT_VALUE record missing or its key differs from the message key")
        if self.validator is None or not self.validator.validate(rec.key, rec.value):
            raise ProtocolError("PUT_VALUE record rejected by the validator")
        old = self._get_record(rec.key, now)
        if (
            old is not None
            and old.value != rec.value
            and self.validator.select(rec.key, [old.value, rec.value]) != 1
        ):
            raise ProtocolError("PUT_VALUE record is not better than the stored one")
        if not self.records.put(rec, now):
            raise ProtocolError("record store full")
        return request
