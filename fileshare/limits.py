"""Every resource limit in one place. Exceeding one is a protocol error that closes the offender.

Each layer imports its limits from here, so an operator can read (and a test can assert) the
whole set at a glance.
"""

from __future__ import annotations

KIB = 1024
MIB = 1024 * KIB

# --- content ---
MAX_CHUNK_SIZE = 1 * MIB  # largest chunk the importer will produce
MAX_BLOCK_SIZE = 2 * MIB  # largest block we store, serve or accept (bitswap limit)
MAX_LINKS_PER_NODE = 8192  # dag-pb links we accept when decoding a node
MAX_CID_BYTES = 256  # a binary CID longer than this is refused

# --- multistream-select ---
MULTISTREAM_MAX_LINE = 1024  # bytes, including the trailing newline
MULTISTREAM_MAX_ROUNDS = 32  # protocol proposals per negotiation
NEGOTIATION_TIMEOUT = 10.0  # seconds for multistream + noise handshake on a new connection

# --- noise ---
NOISE_MAX_FRAME = 65535  # ciphertext bytes per frame, including the 16-byte tag
NOISE_MAX_PLAINTEXT = NOISE_MAX_FRAME - 16

# --- yamux ---
YAMUX_INITIAL_WINDOW = 256 * KIB
YAMUX_MAX_WINDOW = 16 * MIB  # receive window a stream may grow to
YAMUX_MAX_STREAMS = 1024  # concurrent streams per connection
YAMUX_MAX_UNACKED_INBOUND = 256  # inbound streams we have not yet acknowledged
YAMUX_MAX_FRAME_PAYLOAD = 16 * MIB  # a data frame claiming more than this is a protocol error

# --- connections ---
MAX_CONNECTIONS = 512
DIAL_TIMEOUT = 10.0

# --- protocol messages ---
IDENTIFY_MAX_MESSAGE = 64 * KIB
KAD_MAX_MESSAGE = 64 * KIB
BITSWAP_MAX_MESSAGE = 4 * MIB
PUBSUB_MAX_MESSAGE = 1 * MIB
