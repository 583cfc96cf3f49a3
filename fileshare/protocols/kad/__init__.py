"""Kademlia DHT (/ipfs/kad/1.0.0): sans-io messages, routing table, lookups, provider store, server.

The network driver (streams on the host) lives elsewhere; everything here takes ``now`` and
returns messages or decisions, so the whole DHT also runs in ``bench/dht_sim.py``.
"""

from .lookup import Lookup, LookupResult, LookupStats, QueryState
from .messages import (
    PROTOCOL_ID,
    ConnectionType,
    Message,
    MessageType,
    Peer,
    Record,
    decode_message,
    encode_message,
    is_multihash,
    validate_message,
)
from .providers import ProviderRecord, ProviderStore, Reprovider
from .routing import (
    AddResult,
    AddStatus,
    DiversityConfig,
    PeerEntry,
    RoutingTable,
    common_prefix_len,
    ip_groups,
    kad_key,
    refresh_key,
)
from .server import KadServer, RecordStore, RecordValidator

__all__ = [
    "PROTOCOL_ID",
    "AddResult",
    "AddStatus",
    "ConnectionType",
    "DiversityConfig",
    "KadServer",
    "Lookup",
    "LookupResult",
    "LookupStats",
    "Message",
    "MessageType",
    "Peer",
    "PeerEntry",
    "ProviderRecord",
    "ProviderStore",
    "QueryState",
    "Record",
    "RecordStore",
    "RecordValidator",
    "Reprovider",
    "RoutingTable",
    "common_prefix_len",
    "decode_message",
    "encode_message",
    "ip_groups",
    "is_multihash",
    "kad_key",
    "refresh_key",
    "validate_message",
]
