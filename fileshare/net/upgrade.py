"""Connection upgrade: raw TCP -> multistream ``/noise`` -> Noise XX -> multistream ``/yamux/1.0.0``
-> yamux, in both roles, and the resulting ``Connection`` with its negotiated streams.

Only Noise is offered or accepted: a peer proposing ``/plaintext/2.0.0``, secio or TLS gets ``na``
and, when it has nothing else to offer, the connection is closed. The whole handshake is bounded
by ``NEGOTIATION_TIMEOUT``; so is the protocol negotiation of every stream.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Sequence
from typing import Literal

import trio
from multiaddr import Multiaddr

from ..errors import FileshareError, ProtocolError
from ..identity.keys import PrivateKey, PublicKey
from ..identity.peerid import PeerId
from ..limits import NEGOTIATION_TIMEOUT
from .buffered import BufferedStream
from .multistream import select_inbound, select_outbound
from .noise import NOISE_PROTOCOL_ID, SecureStream, secure_inbound, secure_outbound
from .yamux import YAMUX_PROTOCOL_ID, YamuxConnection, YamuxStream

Direction = Literal["inbound", "outbound"]

SECURITY_PROTOCOLS = (NOISE_PROTOCOL_ID,)
MUXER_PROTOCOLS = (YAMUX_PROTOCOL_ID,)

_STREAM_ERRORS = (
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.EndOfChannel,
    OSError,
    EOFError,
)

# what a protocol service catches around one stream's I/O: the stream or its connection went
# away, timed out, or the peer broke a protocol rule (FileshareError and subclasses)
STREAM_FAILURES = (*_STREAM_ERRORS, trio.TooSlowError, FileshareError)

_ids = itertools.count(1)


class UpgradeError(ProtocolError):
    """The security or muxer handshake of a new connection failed (the connection is closed)."""


class PeerIdMismatch(UpgradeError):
    """The remote proved a different identity than the PeerId we dialled."""


class NetStream(BufferedStream):
    """A yamux stream after protocol negotiation; keeps bytes read past the negotiation."""

    def __init__(self, muxed: YamuxStream, connection: Connection) -> None:
        super().__init__(muxed)
        self.muxed = muxed
        self.connection = connection
        self.protocol: str | None = None

    @property
    def remote_peer(self) -> PeerId:
        return self.connection.remote_peer

    async def reset(self) -> None:
        """Abort the stream in both directions (yamux RST); never raises, even when cancelled."""
        # if the connection is already gone there is nothing left to reset
        with trio.CancelScope(shield=True), contextlib.suppress(Exception):
            await self.muxed.reset()


class Connection:
    """One secured, multiplexed connection to a peer."""

    def __init__(
        self,
        *,
        muxer: YamuxConnection,
        secure: SecureStream,
        direction: Direction,
        local_addr: Multiaddr | None,
        remote_addr: Multiaddr | None,
    ) -> None:
        self.id = next(_ids)
        self.muxer = muxer
        self.secure = secure
        self.direction: Direction = direction
        self.local_addr = local_addr
        self.remote_addr = remote_addr
        self.local_peer: PeerId = secure.local_peer
        self.remote_peer: PeerId = secure.remote_peer
        self.remote_public_key: PublicKey = secure.remote_public_key
        self.opened_at = time.time()

    @property
    def closed(self) -> bool:
        return bool(self.muxer.closed)

    async def open_stream(self, protocols: Sequence[str]) -> tuple[NetStream, str]:
        """Open a stream and negotiate the first of ``protocols`` the peer supports."""
        muxed = await self.muxer.open_stream()
        stream = NetStream(muxed, self)
        try:
            with trio.fail_after(NEGOTIATION_TIMEOUT):
                protocol = await select_outbound(stream, list(protocols))
        except trio.TooSlowError as exc:
            await stream.reset()
            raise ProtocolError(
                f"{self.remote_peer}: stream negotiation timed out after {NEGOTIATION_TIMEOUT:g} s"
            ) from exc
        except BaseException:
            await stream.reset()
            raise
        stream.protocol = protocol
        muxed.protocol = protocol
        return stream, protocol

    async def accept_stream(self) -> NetStream:
        """The next inbound stream, not yet negotiated (raises once the connection is closed)."""
        return NetStream(await self.muxer.accept_stream(), self)

    async def aclose(self) -> None:
        await self.muxer.aclose()

    def __repr__(self) -> str:
        return (
            f"<Connection #{self.id} {self.direction} {self.remote_peer} "
            f"{self.remote_addr} closed={self.closed}>"
        )


async def _security_handshake(
    raw: trio.abc.Stream,
    key: PrivateKey,
    direction: Direction,
    expected_peer: PeerId | None,
) -> SecureStream:
    buffered = BufferedStream(raw)
    if direction == "outbound":
        await select_outbound(buffered, list(SECURITY_PROTOCOLS))
        secure = await secure_outbound(buffered, key, expected_peer)
    else:
        refused: list[str] = []

        def supported(protocol: str) -> bool:
            if protocol in SECURITY_PROTOCOLS:
                return True
            if len(refused) < 8:
                refused.append(protocol)
            return False

        try:
            await select_inbound(buffered, supported)
        except ProtocolError as exc:
            if refused:
                raise UpgradeError(
                    f"peer offered only {', '.join(refused)} (we accept only "
                    f"{', '.join(SECURITY_PROTOCOLS)}): {exc}"
                ) from exc
            raise
        secure = await secure_inbound(buffered, key)
    if expected_peer is not None and secure.remote_peer != expected_peer:
        raise PeerIdMismatch(f"peer is {secure.remote_peer}, not the expected {expected_peer}")
    return secure


async def upgrade(
    raw: trio.abc.Stream,
    key: PrivateKey,
    direction: Direction,
    *,
    expected_peer: PeerId | None = None,
    local_addr: Multiaddr | None = None,
    remote_addr: Multiaddr | None = None,
    timeout: float = NEGOTIATION_TIMEOUT,
) -> Connection:
    """Secure and multiplex ``raw``; on any failure close it and raise ``UpgradeError``."""
    stage = "security negotiation"
    try:
        with trio.fail_after(timeout):
            secure = await _security_handshake(raw, key, direction, expected_peer)
            stage = "muxer negotiation"
            inner = BufferedStream(secure)
            if direction == "outbound":
                await select_outbound(inner, list(MUXER_PROTOCOLS))
            else:
                await select_inbound(inner, MUXER_PROTOCOLS)
    except BaseException as exc:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(raw)
        if isinstance(exc, UpgradeError):
            raise type(exc)(f"{stage} failed: {exc}") from exc
        if isinstance(exc, trio.TooSlowError):
            raise UpgradeError(f"{stage} timed out after {timeout:g} s") from exc
        if isinstance(exc, FileshareError):
            raise UpgradeError(f"{stage} failed: {exc}") from exc
        if isinstance(exc, _STREAM_ERRORS):
            raise UpgradeError(f"{stage} failed: connection closed ({type(exc).__name__})") from exc
        raise
    muxer = YamuxConnection(inner, is_initiator=direction == "outbound")
    return Connection(
        muxer=muxer,
        secure=secure,
        direction=direction,
        local_addr=local_addr,
        remote_addr=remote_addr,
    )
