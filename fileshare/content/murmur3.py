"""MurmurHash3 x64 (Austin Appleby's public-domain hash), as UnixFS HAMT directories use it.

``murmur3_x64_64(data)`` is multihash ``murmur3-x64-64`` (0x22): the first 64-bit half (h1) of
MurmurHash3_x64_128 with seed 0, as 8 big-endian bytes. Not a cryptographic hash: it only spreads
directory entry names over a HAMT's buckets.
"""

from __future__ import annotations

__all__ = ["murmur3_x64_64", "murmur3_x64_128"]

_M = (1 << 64) - 1
_C1 = 0x87C37B91114253D5
_C2 = 0x4CF5AD432745937F


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M


def _fmix(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _M
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _M
    return k ^ (k >> 33)


def _mix_k1(k1: int) -> int:
    return (_rotl((k1 * _C1) & _M, 31) * _C2) & _M


def _mix_k2(k2: int) -> int:
    return (_rotl((k2 * _C2) & _M, 33) * _C1) & _M


def murmur3_x64_128(data: bytes, seed: int = 0) -> tuple[int, int]:
    """(h1, h2) of MurmurHash3_x64_128."""
    h1 = h2 = seed & _M
    n = len(data)
    end = n - n % 16
    for i in range(0, end, 16):
        h1 ^= _mix_k1(int.from_bytes(data[i : i + 8], "little"))
        h1 = (_rotl(h1, 27) + h2) & _M
        h1 = (h1 * 5 + 0x52DCE729) & _M
        h2 ^= _mix_k2(int.from_bytes(data[i + 8 : i + 16], "little"))
        h2 = (_rotl(h2, 31) + h1) & _M
        h2 = (h2 * 5 + 0x38495AB5) & _M
    tail = data[end:]
    if len(tail) > 8:
        h2 ^= _mix_k2(int.from_bytes(tail[8:], "little"))
    if tail:
        h1 ^= _mix_k1(int.from_bytes(tail[:8], "little"))
    h1 ^= n
    h2 ^= n
    h1 = (h1 + h2) & _M
    h2 = (h2 + h1) & _M
    h1 = _fmix(h1)
    h2 = _fmix(h2)
    h1 = (h1 + h2) & _M
    h2 = (h2 + h1) & _M
    return h1, h2


def murmur3_x64_64(data: bytes) -> bytes:
    """The ``murmur3-x64-64`` digest of ``data`` (8 bytes)."""
    return murmur3_x64_128(data)[0].to_bytes(8, "big")
