"""Bitswap 1.2.0 (and 1.1.0/1.0.0): wire messages, the server's decision engine, fetch sessions."""

from .ledger import Ledger, Want
from .messages import (
    PROTOCOL_1_0_0,
    PROTOCOL_1_1_0,
    PROTOCOL_1_2_0,
    PROTOCOLS,
    BlockPresence,
    Message,
    Payload,
    Prefix,
    PresenceType,
    WantEntry,
    Wantlist,
    WantType,
    decode_message,
    encode_message,
)
from .server import DecisionEngine, Response, ResponseBlock, StoreView
from .session import Session
from .session_types import (
    Action,
    CheckLocal,
    PeerDropped,
    PeerStats,
    Progress,
    SendWants,
    SessionConfig,
    StoreBlock,
)

__all__ = [
    "PROTOCOLS",
    "PROTOCOL_1_0_0",
    "PROTOCOL_1_1_0",
    "PROTOCOL_1_2_0",
    "Action",
    "BlockPresence",
    "CheckLocal",
    "DecisionEngine",
    "Ledger",
    "Message",
    "Payload",
    "PeerDropped",
    "PeerStats",
    "Prefix",
    "PresenceType",
    "Progress",
    "Response",
    "ResponseBlock",
    "SendWants",
    "Session",
    "SessionConfig",
    "StoreBlock",
    "StoreView",
    "Want",
    "WantEntry",
    "WantType",
    "Wantlist",
    "decode_message",
    "encode_message",
]
