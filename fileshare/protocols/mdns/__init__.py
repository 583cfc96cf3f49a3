"""libp2p mDNS peer discovery (``_p2p._udp.local``): DNS codec, sans-io core, trio service."""

from .core import (
    MDNS_GROUP_V4,
    MDNS_PORT,
    SERVICE_NAME,
    DiscoveryTable,
    Handled,
    MdnsCore,
    Reply,
    announceable,
    build_query,
    build_response,
    parse_response,
    random_peer_name,
)
from .dns import Message, Question, Record, RRType, decode_message, encode_message
from .service import MdnsService

__all__ = [
    "MDNS_GROUP_V4",
    "MDNS_PORT",
    "SERVICE_NAME",
    "DiscoveryTable",
    "Handled",
    "MdnsCore",
    "MdnsService",
    "Message",
    "Question",
    "RRType",
    "Record",
    "Reply",
    "announceable",
    "build_query",
    "build_response",
    "decode_message",
    "encode_message",
    "parse_response",
    "random_peer_name",
]
