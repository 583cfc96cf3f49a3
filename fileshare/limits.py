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
MAX_DAG_DEPTH = 64  # levels below a file root the DAG reader follows before refusing
MAX_HAMT_FANOUT = 1024  # UnixFS HAMT fanout we accept (spec maximum; CVE-2023-23625)

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
YAMUX_WINDOW_GROWTH_RTTS = 2.0  # a window drained in under this many RTTs doubles (auto-tuning)
YAMUX_MAX_SEND_FRAME = 256 * KIB  # largest data frame we send
YAMUX_SEND_BUFFER = 1 * MIB  # bytes queued for the transport before stream writers wait
YAMUX_MAX_CONTROL_BACKLOG = 256 * KIB  # unsent pongs/RSTs/updates: a peer that never reads is cut off
YAMUX_CLOSE_TIMEOUT = 2.0  # seconds to flush a GoAway before closing the transport

# --- connections ---
MAX_CONNECTIONS = 512
DIAL_TIMEOUT = 10.0
TCP_LISTEN_BACKLOG = 128  # pending TCP connections the kernel queues per listener
PEERSTORE_MAX_PEERS = 10_000  # peers in the peer store (least recently updated evicted first)
PEERSTORE_MAX_ADDRS = 32  # addresses kept per peer
PEERSTORE_MAX_PROTOCOLS = 256  # protocol ids kept per peer
IDENTIFY_TIMEOUT = 10.0  # seconds for one identify exchange
PING_TIMEOUT = 10.0  # seconds a ping waits for its echo
PING_IDLE_TIMEOUT = 60.0  # seconds an inbound ping stream may sit idle
PING_MAX_PER_STREAM = 1024  # pings we echo on one inbound stream before closing it
PING_MAX_INBOUND_STREAMS = 2  # concurrent inbound ping streams per peer (ping spec)

# --- protocol messages ---
IDENTIFY_MAX_MESSAGE = 64 * KIB
KAD_MAX_MESSAGE = 64 * KIB
BITSWAP_MAX_MESSAGE = 4 * MIB
PUBSUB_MAX_MESSAGE = 1 * MIB

# --- identity ---
MAX_PUBLIC_KEY_BYTES = 2 * KIB  # a PublicKey protobuf longer than this is refused (RSA-8192 fits)
RSA_MIN_BITS = 2048  # RSA peer keys outside this range are not accepted for signatures
RSA_MAX_BITS = 8192
MAX_PEER_ID_TEXT = 256  # characters in a text PeerId

# --- kademlia DHT (/ipfs/kad/1.0.0) ---
KAD_K = 20  # bucket size, replication factor, peers per FIND_NODE answer
KAD_ALPHA = 3  # concurrent requests per lookup (per disjoint path)
KAD_MAX_KEY = 80  # bytes in a message/record key (IPFS kad-dht spec)
KAD_MAX_PEER_ID = 128  # bytes in a Peer.id
KAD_MAX_ADDRS_PER_PEER = 32  # multiaddrs we accept per Peer entry
KAD_MAX_ADDR_BYTES = 512  # bytes in one binary multiaddr
KAD_MAX_CLOSER_PEERS = 64  # closerPeers per message (we send KAD_K)
KAD_MAX_PROVIDER_PEERS = 128  # providerPeers per message
KAD_MAX_PROVIDERS_RETURNED = 20  # providers we put in one GET_PROVIDERS answer
KAD_MAX_RECORD_VALUE = 16 * KIB  # bytes in a PUT_VALUE record value
KAD_MAX_TIME_RECEIVED = 64  # characters in Record.timeReceived
KAD_RPC_TIMEOUT = 10.0  # seconds a lookup waits for one peer's answer
KAD_PROVIDER_TTL = 48 * 3600.0  # provider records expire after 48 h
KAD_PROVIDER_REPUBLISH = 22 * 3600.0  # providers re-announce every 22 h
KAD_PROVIDER_ADDR_TTL = 24 * 3600.0  # provider multiaddrs are served for 24 h
KAD_MAX_PROVIDERS_PER_KEY = 64  # new providers beyond this are refused
KAD_MAX_PROVIDER_RECORDS = 100_000  # provider records stored in total
KAD_RECORD_TTL = 36 * 3600.0  # PUT_VALUE records expire after 36 h
KAD_MAX_RECORDS = 10_000  # PUT_VALUE records stored in total
KAD_REFRESH_INTERVAL = 600.0  # seconds between refreshes of a bucket
KAD_MAX_REFRESH_CPL = 15  # deepest bucket refreshed by a random-key lookup
KAD_LIVENESS_GRACE = 60.0  # an old peer seen this recently is kept without a ping
KAD_IP_GROUP_PER_BUCKET = 2  # peers from one IPv4 /16 (IPv6 /32) per bucket
KAD_IP_GROUP_PER_TABLE = 3  # peers from one IPv4 /16 (IPv6 /32) per routing table
KAD_LOOKUP_MAX_PEERS = 2000  # candidates one lookup tracks (beyond those already queried)
KAD_LOOKUP_TIMEOUT = 60.0  # seconds one whole lookup (find providers, closest peers) may take
KAD_STREAM_IDLE_TIMEOUT = 60.0  # seconds an inbound DHT stream may wait for its next request
KAD_MAX_INBOUND_STREAMS_PER_PEER = 32  # concurrent inbound DHT streams one peer may hold open
KAD_OUTBOUND_IDLE = 30.0  # seconds an idle outbound DHT stream is kept for reuse
KAD_MAX_IDLE_STREAMS_PER_PEER = 2  # idle outbound DHT streams kept per peer
KAD_PROVIDE_ACK_TIMEOUT = 5.0  # seconds we wait for an (optional) ADD_PROVIDER echo
KAD_PROVIDE_RETRY = 30.0  # seconds before a provide that reached no peer is retried
KAD_STALE_PEER_AGE = 3600.0  # table peers silent this long get a liveness check
KAD_PERSIST_INTERVAL = 60.0  # seconds between saves of the routing table to the repository
KAD_MAX_PERSISTED_PEERS = 5000  # routing table peers saved to / loaded from the repository
KAD_MAX_TABLE_ADDRS = 8  # addresses kept per routing table peer (and sent in answers)
KAD_SEED_WAIT = 5.0  # seconds a lookup waits for a first routing table peer when it has none
KAD_MAINTENANCE_CONCURRENCY = 4  # refresh lookups / liveness checks run at once

# --- bitswap (/ipfs/bitswap/1.2.0) ---
BITSWAP_MAX_WANTLIST_ENTRIES = 8192  # wantlist entries in one received message
BITSWAP_MAX_PRESENCES = 8192  # block presences in one received message
BITSWAP_MAX_BLOCKS_PER_MESSAGE = 8192  # blocks/payloads in one received message
BITSWAP_MAX_WANTLIST_PER_PEER = 8192  # wants the server keeps per peer (further wants ignored)
BITSWAP_RESPONSE_TARGET = 1 * MIB  # bytes a server response aims for (one larger block goes alone)
BITSWAP_INITIAL_WINDOW = 4  # blocks in flight to a peer before its throughput is measured
BITSWAP_MAX_WINDOW = 64  # blocks in flight to one peer at most, for blocks of 1 MiB and more
BITSWAP_MAX_WINDOW_BYTES = 64 * MIB  # smaller blocks: this many bytes in flight (by the mean size)
BITSWAP_MAX_WINDOW_BLOCKS = 1024  # ... but never more blocks (kubo queues 1024 wants per peer)
BITSWAP_QUEUE_TARGET = 0.5  # seconds of a peer's measured throughput kept in flight to it
BITSWAP_MAX_BAD_BLOCKS = 3  # corrupt/unrequested blocks before a peer is dropped from a session
BITSWAP_PEER_IDLE_TIMEOUT = 15.0  # seconds a peer with wants may stay silent before a strike
BITSWAP_MAX_STRIKES = 3  # idle timeouts in a row before a peer is dropped from a session
BITSWAP_PROBE_INTERVAL = 5.0  # seconds between want-have probes to a peer not known to have blocks
BITSWAP_MAX_ENDGAME_COPIES = 2  # peers one block is requested from at most (end game)

# --- pubsub / gossipsub (/meshsub/1.2.0, 1.1.0, 1.0.0, /floodsub/1.0.0) ---
PUBSUB_D = 6  # target mesh degree
PUBSUB_D_LO = 4  # graft when the mesh has fewer peers
PUBSUB_D_HI = 12  # prune down to D when the mesh has more peers
PUBSUB_D_OUT = 2  # outbound connections kept in each mesh (< D_LO, <= D/2)
PUBSUB_D_SCORE = 4  # best-scoring peers kept when pruning an oversubscribed mesh
PUBSUB_D_LAZY = 6  # minimum peers gossip (IHAVE) is emitted to per topic
PUBSUB_GOSSIP_FACTOR = 0.25  # fraction of eligible non-mesh peers gossip goes to, if more than D_LAZY
PUBSUB_HEARTBEAT_INTERVAL = 1.0  # seconds
PUBSUB_FANOUT_TTL = 60.0  # seconds fanout state lives after our last publish to a topic
PUBSUB_MCACHE_LEN = 5  # heartbeat windows of messages kept for IWANT
PUBSUB_MCACHE_GOSSIP = 3  # most recent windows advertised in IHAVE
PUBSUB_SEEN_TTL = 120.0  # seconds a message id stays in the seen cache
PUBSUB_MAX_SEEN = 200_000  # message ids in the seen cache (oldest dropped first)
PUBSUB_PRUNE_BACKOFF = 60.0  # seconds before regrafting a peer after a PRUNE
PUBSUB_UNSUBSCRIBE_BACKOFF = 10.0  # backoff sent with the PRUNEs of an unsubscribe
PUBSUB_MAX_BACKOFF = 3600.0  # a PRUNE asking for a longer backoff is clamped to this
PUBSUB_GRAFT_FLOOD_WINDOW = 10.0  # a GRAFT this soon after our PRUNE costs an extra penalty
PUBSUB_PX_PEERS = 16  # peers offered in a PRUNE's peer exchange
PUBSUB_MAX_PX_PEERS = 64  # peers accepted in one PRUNE
PUBSUB_MAX_PEER_RECORD = 8 * KIB  # bytes in one signedPeerRecord
PUBSUB_MAX_PEER_ID = 128  # bytes in a PeerInfo.peerID or Message.from
PUBSUB_MAX_TOPIC_LENGTH = 512  # bytes in a topic id
PUBSUB_MAX_MESSAGE_ID = 256  # bytes in one message id (IHAVE/IWANT/IDONTWANT)
PUBSUB_MAX_SUBSCRIPTIONS_PER_RPC = 1024
PUBSUB_MAX_MESSAGES_PER_RPC = 5000
PUBSUB_MAX_CONTROL_ENTRIES = 1024  # ihave+iwant+graft+prune+idontwant entries in one RPC
PUBSUB_MAX_IDS_PER_RPC = 10_000  # message ids across all control entries of one RPC
PUBSUB_MAX_TOPICS_PER_PEER = 256  # subscriptions we track per peer; more are ignored
PUBSUB_MAX_IHAVE_MESSAGES = 10  # IHAVE entries accepted per peer per heartbeat
PUBSUB_MAX_IHAVE_LENGTH = 5000  # message ids accepted in IHAVEs (and asked for) per peer per heartbeat
PUBSUB_MAX_IWANT_REPLIES = 3  # times we answer one peer's IWANT for the same message
PUBSUB_IWANT_FOLLOWUP = 3.0  # seconds an IHAVE'd message may take to arrive after our IWANT
PUBSUB_MAX_IDONTWANT_PER_HEARTBEAT = 5000  # IDONTWANT ids accepted per peer per heartbeat
PUBSUB_IDONTWANT_MIN_SIZE = 1 * KIB  # we send IDONTWANT only for messages at least this large
PUBSUB_IDONTWANT_TTL = 3.0  # seconds an IDONTWANT is honoured
PUBSUB_OPPORTUNISTIC_GRAFT_TICKS = 60  # heartbeats between opportunistic-graft checks
PUBSUB_OPPORTUNISTIC_GRAFT_PEERS = 2
PUBSUB_SCORE_RETAIN = 600.0  # seconds a disconnected peer's (non-positive) score is remembered
PUBSUB_MAX_PENDING_PROMISES = 10_000  # IWANT follow-ups tracked (oldest dropped first)
PUBSUB_PEER_QUEUE_FRAMES = 1024  # RPC frames queued for one peer's outbound stream; more are dropped
PUBSUB_PEER_QUEUE_BYTES = 16 * MIB  # bytes queued for one peer's outbound stream; more are dropped
PUBSUB_SUBSCRIBER_BUFFER = 1024  # delivered messages buffered per local subscription; more are dropped
PUBSUB_PX_DIALS = 8  # concurrent best-effort dials of peer-exchange candidates
PUBSUB_PX_DIAL_TIMEOUT = 10.0  # seconds one peer-exchange dial may take
ANNOUNCE_MAX_BYTES = 8 * KIB  # encoded share announcement document
ANNOUNCE_MAX_NAME = 255  # UTF-8 bytes in an announced file name
ANNOUNCE_MAX_ADDRS = 16  # sharer addresses in one announcement
ANNOUNCE_MAX_ADDR_LENGTH = 256  # characters in one announced multiaddr

# --- sync ---
SYNC_MAX_SNAPSHOT_BYTES = 64 * MIB  # encoded signed folder snapshot (or saved folder index)
SYNC_MAX_ENTRIES = 200_000  # files + tombstones in one snapshot
SYNC_MAX_PATH_BYTES = 4096  # UTF-8 bytes in a synced relative path
SYNC_MAX_NAME_BYTES = 255  # UTF-8 bytes in one path component
SYNC_MAX_DEPTH = 64  # components in a synced path
SYNC_MAX_FILE_SIZE = 1 << 50  # a file claiming more than 1 PiB is implausible: the snapshot is refused
SYNC_MAX_VERSION_PEERS = 256  # peers in one version vector
SYNC_MAX_WRITERS = 64  # allowed writers of one folder
SYNC_MAX_INVITE_ADDRS = 16  # inviter multiaddrs in one invite
SYNC_MAX_INVITE_CHARS = 8192  # characters in an invite string
SYNC_SETTLE_SECONDS = 0.25  # a changed file is shared once its size/mtime held still this long
SYNC_DEBOUNCE_MS = 50  # watcher: filesystem events are gathered this long before a scan
SYNC_RESCAN_INTERVAL = 60.0  # seconds between safety-net full rescans
SYNC_IMPORT_CONCURRENCY = 4  # changed files imported at once by a scan
SYNC_FREE_SPACE_MARGIN = 64 * MIB  # bytes left free on a disk after applying a snapshot
SYNC_MAX_POINTER_BYTES = 32 * KIB  # encoded snapshot pointer (a gossipsub message of a folder topic)
SYNC_REPUBLISH_INTERVAL = 30.0  # seconds between re-announcements of a node's latest snapshot
SYNC_PEER_POLL_INTERVAL = 0.25  # seconds between checks for peers newly subscribed to a folder topic
SYNC_FETCH_STALL_TIMEOUT = 30.0  # seconds without a block before a sync fetch gives up
SYNC_FETCH_OVERHEAD = 1 * MIB  # bytes a file fetch may exceed its claimed size by (DAG nodes, in flight)
SYNC_BATCH_FETCH_MIN = 16  # files to fetch from one snapshot above which its whole root DAG is fetched
SYNC_REDIAL_INTERVAL = 5.0  # seconds between redials of a daemon sync folder's known peers

# --- mDNS discovery (_p2p._udp.local, RFC 6762) ---
MDNS_MAX_MESSAGE = 9000  # bytes in one mDNS datagram we accept (RFC 6762 s17 packet ceiling)
MDNS_MAX_SEND = 1400  # bytes in a response we send (fits an Ethernet MTU); addresses dropped to fit
MDNS_MAX_RECORDS = 256  # questions + records in one decoded message
MDNS_MAX_POINTER_JUMPS = 32  # compression pointers followed while decoding one name
MDNS_QUERY_INTERVAL = 60.0  # seconds between our "find all peers" queries (one is sent at start)
MDNS_RECORD_TTL = 120  # seconds, TTL of the records we announce
MDNS_MIN_RESPONSE_INTERVAL = 1.0  # seconds between two multicast responses of ours (RFC 6762 s6)
MDNS_MAX_ADDRS_ANNOUNCED = 16  # dnsaddr TXT strings in one response of ours
MDNS_MAX_ADDRS_PER_PEER = 16  # dnsaddr entries taken from one discovered peer
MDNS_MAX_PEERS = 64  # discovered peers remembered (the least recently seen one is dropped)
MDNS_MAX_CONCURRENT_DIALS = 4  # discovered peers dialled at once; more wait for the next response
MDNS_REDIAL_INTERVAL = 60.0  # seconds before a discovered peer is dialled again
MDNS_ADDR_REFRESH = 5.0  # seconds between re-reads of our listen addresses while mDNS is active
MDNS_IDLE_POLL = 0.5  # seconds between checks for an announceable address while mDNS is dormant
MDNS_RESPONSE_DELAY = (0.02, 0.12)  # seconds, random delay before answering a query (RFC 6762 s6)

# --- daemon HTTP servers (control API and gateway, fileshare.daemon.http) ---
HTTP_MAX_HEADER_BYTES = 16 * KIB  # request line + headers of one request
HTTP_MAX_BODY_BYTES = 1 * MIB  # request body (the API takes small JSON documents)
HTTP_MAX_TARGET = 4 * KIB  # characters in a request target (path + query)
HTTP_HEADER_TIMEOUT = 10.0  # seconds a client may take to send a request's head and body
HTTP_KEEPALIVE_TIMEOUT = 30.0  # seconds an idle keep-alive connection stays open
HTTP_WRITE_TIMEOUT = 60.0  # seconds one write to a client may block (a reader that stopped)
HTTP_MAX_CONNECTIONS = 64  # concurrent connections per server; more get 503 and are closed
HTTP_READ_SIZE = 64 * KIB  # bytes read from a socket at once
GATEWAY_MAX_PATH_SEGMENTS = 64  # path components after /ipfs/<cid>
CAR_MAX_HEADER_BYTES = 64 * KIB  # encoded CARv1 header we accept when reading a CAR
CAR_MAX_ROOTS = 1024  # roots in one CAR header we accept
