"""A trio stream wrapper with a read-back buffer.

Protocol negotiation often reads a little past its own end (a multistream reply followed by the
first Noise message in the same segment). ``BufferedStream`` keeps those bytes, and the next layer
reads them first, so no layer loses data that belonged to the one after it.
"""

from __future__ import annotations

import trio

from ..errors import DecodeError, ProtocolError
from ..wire.varint import MAX_VARINT_BYTES


class BufferedStream(trio.abc.HalfCloseableStream):
    """Wraps a ``trio.abc.Stream``; ``receive_some`` returns buffered bytes before reading more."""

    __slots__ = ("_buf", "_inner", "_pos")

    def __init__(self, inner: trio.abc.Stream) -> None:
        self._inner = inner
        self._buf = b""  # unconsumed bytes are self._buf[self._pos:]
        self._pos = 0

    @property
    def inner(self) -> trio.abc.Stream:
        return self._inner

    @property
    def buffered(self) -> int:
        """Number of bytes held in the read-back buffer."""
        return len(self._buf) - self._pos

    def unread(self, data: bytes | bytearray | memoryview) -> None:
        """Push ``data`` back so the next read returns it first."""
        if not data:
            return
        rest = self._buf[self._pos :] if self._pos else self._buf
        self._buf = bytes(data) + rest
        self._pos = 0

    def _take(self, n: int) -> bytes:
        pos = self._pos
        end = min(pos + n, len(self._buf))
        out = self._buf if pos == 0 and end == len(self._buf) else self._buf[pos:end]
        if end == len(self._buf):
            self._buf, self._pos = b"", 0
        else:
            self._pos = end
        return out

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if self._pos < len(self._buf):
            return self._take(len(self._buf) if max_bytes is None else max_bytes)
        return bytes(await self._inner.receive_some(max_bytes))

    async def receive_exactly(self, n: int) -> bytes:
        """Read exactly ``n`` bytes; ``ProtocolError("unexpected EOF")`` if the stream ends first."""
        if n < 0:
            raise ValueError("n must be >= 0")
        have = len(self._buf) - self._pos
        if have >= n:
            return self._take(n)
        parts = [self._buf[self._pos :]] if have else []
        while have < n:
            chunk = await self._inner.receive_some()
            if not chunk:
                # keep what we had so a caller that catches the error does not lose it
                self._buf, self._pos = b"".join(parts), 0
                raise ProtocolError("unexpected EOF")
            parts.append(bytes(chunk))
            have += len(chunk)
        self._buf, self._pos = b"".join(parts), 0
        return self._take(n)

    async def receive_uvarint(self, max_bytes: int = MAX_VARINT_BYTES) -> int:
        """Read one minimal unsigned varint of at most ``max_bytes`` bytes."""
        result = 0
        for i in range(max_bytes):
            b = (await self.receive_exactly(1))[0]
            result |= (b & 0x7F) << (7 * i)
            if b < 0x80:
                if b == 0 and i > 0:
                    raise DecodeError("non-minimal varint")
                return result
        raise DecodeError(f"varint longer than {max_bytes} bytes")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(memoryview(data) if isinstance(data, bytearray) else data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        """Half-close the sending side if the wrapped stream supports it."""
        if isinstance(self._inner, trio.abc.HalfCloseableStream):
            await self._inner.send_eof()
        else:
            raise NotImplementedError(f"{type(self._inner).__name__} cannot half-close")

    async def aclose(self) -> None:
        self._buf, self._pos = b"", 0
        await self._inner.aclose()
