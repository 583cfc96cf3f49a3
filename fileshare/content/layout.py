"""DAG layout parameters: chunk size, fan-out, hash, leaf type, CID version; IPIP-499 profiles.

``PROFILES`` holds the two IPIP-499 profiles exactly as specified (sha2-256, so their CIDs match
Kubo and the JS importer). ``make_layout`` starts from a profile and swaps in our default hash,
blake3; with blake3 every CID is v1 (CIDv0 can only name sha2-256 dag-pb blocks).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..limits import KIB, MAX_CHUNK_SIZE, MAX_LINKS_PER_NODE, MIB
from .cid import BLAKE3, DIGEST_SIZES, HASH_NAMES, SHA2_256

DEFAULT_PROFILE = "unixfs-v1-2025"


@dataclass(frozen=True)
class Layout:
    """How a file becomes a balanced DAG. Invalid combinations raise ``ValueError``."""

    chunk_size: int  # bytes per leaf, <= MAX_CHUNK_SIZE
    max_links: int  # children per dag-pb node
    hash_code: int = BLAKE3
    raw_leaves: bool = True  # raw (0x55) leaves, else UnixFS File dag-pb leaves
    cid_version: int = 1  # 0 only with sha2-256 and dag-pb leaves

    def __post_init__(self) -> None:
        if not 1 <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(
                f"chunk size must be between 1 and {MAX_CHUNK_SIZE} bytes, got {self.chunk_size}"
            )
        if not 2 <= self.max_links <= MAX_LINKS_PER_NODE:
            raise ValueError(
                f"max links per node must be between 2 and {MAX_LINKS_PER_NODE}, got {self.max_links}"
            )
        if self.hash_code not in DIGEST_SIZES:
            names = ", ".join(HASH_NAMES)
            raise ValueError(f"unsupported hash function 0x{self.hash_code:x} (use one of {names})")
        if self.cid_version not in (0, 1):
            raise ValueError(f"CID version must be 0 or 1, got {self.cid_version}")
        if self.cid_version == 0 and (self.hash_code != SHA2_256 or self.raw_leaves):
            raise ValueError("CIDv0 needs sha2-256 and dag-pb (non-raw) leaves")

    def with_hash(self, hash_code: int) -> Layout:
        """The same layout under another hash (CIDv1 unless the hash is sha2-256 and v0 allowed)."""
        version = self.cid_version if hash_code == SHA2_256 else 1
        return replace(self, hash_code=hash_code, cid_version=version)


PROFILES: dict[str, Layout] = {
    # IPIP-499 modern profile: 1 MiB chunks, 1024 links, raw leaves, CIDv1.
    "unixfs-v1-2025": Layout(
        chunk_size=1 * MIB, max_links=1024, hash_code=SHA2_256, raw_leaves=True, cid_version=1
    ),
    # IPIP-499 legacy profile (Kubo defaults before 2025): 256 KiB, 174 links, dag-pb leaves, CIDv0.
    "unixfs-v0-2015": Layout(
        chunk_size=256 * KIB, max_links=174, hash_code=SHA2_256, raw_leaves=False, cid_version=0
    ),
}


def make_layout(
    profile: str = DEFAULT_PROFILE, hash_name: str = "blake3", chunk_size: int | None = None
) -> Layout:
    """A profile's layout with the given hash ("blake3" or "sha2-256") and optional chunk size."""
    base = PROFILES.get(profile)
    if base is None:
        raise ValueError(f"unknown profile {profile!r} (choose from {', '.join(PROFILES)})")
    hash_code = HASH_NAMES.get(hash_name.lower())
    if hash_code is None:
        raise ValueError(f"unknown hash {hash_name!r} (choose from {', '.join(HASH_NAMES)})")
    layout = base.with_hash(hash_code)
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
            raise ValueError(f"chunk size must be an integer, got {chunk_size!r}")
        layout = replace(layout, chunk_size=chunk_size)
    return layout
