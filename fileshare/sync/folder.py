"""Folder identity: a random id and the set of peers allowed to write; invites to join a folder.

The config lives in ``DIR/.fileshare/folder.json``. An invite is one line::

    fsinvite1<base32 of: message Invite { bytes folder = 1; repeated bytes writers = 2;
                                          repeated string addrs = 3; }>

(lower-case, unpadded base32, no spaces, so it survives copy and paste). ``parse_invite`` checks
every field and raises only ``DecodeError``.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from multiaddr import Multiaddr

from ..errors import DecodeError, FileshareError
from ..identity.peerid import PeerId
from ..limits import (
    ANNOUNCE_MAX_ADDR_LENGTH,
    SYNC_MAX_INVITE_ADDRS,
    SYNC_MAX_INVITE_CHARS,
    SYNC_MAX_WRITERS,
)
from ..net import addrs as _addrs
from ..wire.protobuf import Writer, expect_bytes, expect_str, iter_fields
from .paths import RESERVED_DIR

FOLDER_ID_BYTES = 16
INVITE_PREFIX = "fsinvite1"
CONFIG_FILE = f"{RESERVED_DIR}/folder.json"


def new_folder_id() -> bytes:
    return secrets.token_bytes(FOLDER_ID_BYTES)


def folder_id_text(folder: bytes) -> str:
    return base64.b32encode(folder).decode("ascii").rstrip("=").lower()


def parse_folder_id(text: str) -> bytes:
    try:
        raw = _b32decode(text)
    except DecodeError:
        raise DecodeError(f"invalid folder id {text[:40]!r}") from None
    if len(raw) != FOLDER_ID_BYTES or folder_id_text(raw) != text:
        raise DecodeError(f"invalid folder id {text[:40]!r}")
    return raw


def _b32decode(text: str) -> bytes:
    if not text.isascii() or text != text.lower():
        raise DecodeError("expected lower-case base32")
    try:
        return base64.b32decode(text.upper() + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError):
        raise DecodeError("invalid base32") from None


@dataclass(frozen=True, slots=True)
class FolderConfig:
    """A folder's id and allowed writers (the creator by default)."""

    folder: bytes
    writers: frozenset[PeerId]

    @classmethod
    def create(cls, creator: PeerId, extra_writers: Iterable[PeerId] = ()) -> FolderConfig:
        return cls(new_folder_id(), frozenset([creator, *extra_writers]))

    @property
    def id_text(self) -> str:
        return folder_id_text(self.folder)

    def may_write(self, peer: PeerId) -> bool:
        return peer in self.writers

    def to_json(self) -> dict[str, object]:
        return {
            "folder": self.id_text,
            "writers": sorted(str(p) for p in self.writers),
        }

    @classmethod
    def from_json(cls, doc: object) -> FolderConfig:
        if not isinstance(doc, dict) or not isinstance(doc.get("writers"), list):
            raise DecodeError("folder config: expected {folder, writers}")
        folder = doc.get("folder")
        if not isinstance(folder, str):
            raise DecodeError("folder config: folder id must be text")
        writers = doc["writers"]
        if not 0 < len(writers) <= SYNC_MAX_WRITERS or not all(isinstance(w, str) for w in writers):
            raise DecodeError("folder config: bad writer list")
        return cls(parse_folder_id(folder), frozenset(PeerId.from_string(w) for w in writers))

    def save(self, root: Path | str) -> None:
        """Write ``DIR/.fileshare/folder.json`` atomically."""
        path = Path(root) / CONFIG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, root: Path | str) -> FolderConfig | None:
        """The saved config, None when the folder has none; ``FileshareError`` when unreadable."""
        path = Path(root) / CONFIG_FILE
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        try:
            return cls.from_json(json.loads(text))
        except (ValueError, DecodeError) as exc:
            raise FileshareError(f"{path} is damaged ({exc}); remove it to start over") from None


@dataclass(frozen=True, slots=True)
class Invite:
    folder: bytes
    writers: tuple[PeerId, ...]
    addrs: tuple[Multiaddr, ...] = ()

    @property
    def config(self) -> FolderConfig:
        return FolderConfig(self.folder, frozenset(self.writers))


def format_invite(config: FolderConfig, addrs: Iterable[Multiaddr | str] = ()) -> str:
    """The one-line invite for ``config`` with the inviter's ``addrs`` (at most the limit)."""
    w = Writer().bytes(1, config.folder)
    for peer in sorted(config.writers):
        w.bytes(2, peer.bytes)
    for a in list(addrs)[:SYNC_MAX_INVITE_ADDRS]:
        w.string(3, str(a))
    text = INVITE_PREFIX + base64.b32encode(w.finish()).decode("ascii").rstrip("=").lower()
    if len(text) > SYNC_MAX_INVITE_CHARS:
        raise ValueError("invite too long")
    return text


def parse_invite(text: str) -> Invite:
    """Parse and validate an invite line; raises only ``DecodeError``."""
    text = text.strip()
    if len(text) > SYNC_MAX_INVITE_CHARS or not text.startswith(INVITE_PREFIX):
        raise DecodeError(f"not a fileshare invite (should start with {INVITE_PREFIX})")
    raw = _b32decode(text[len(INVITE_PREFIX) :])
    folder: bytes | None = None
    writers: list[PeerId] = []
    addrs: list[Multiaddr] = []
    for fnum, wire, value in iter_fields(raw):
        if fnum == 1 and folder is None:
            folder = expect_bytes(wire, value, "invite folder")
        elif fnum == 2:
            if len(writers) >= SYNC_MAX_WRITERS:
                raise DecodeError(f"invite lists more than {SYNC_MAX_WRITERS} writers")
            writers.append(PeerId.from_bytes(expect_bytes(wire, value, "invite writer")))
        elif fnum == 3:
            if len(addrs) >= SYNC_MAX_INVITE_ADDRS:
                raise DecodeError(f"invite lists more than {SYNC_MAX_INVITE_ADDRS} addresses")
            addr = expect_str(wire, value, "invite address")
            if len(addr) > ANNOUNCE_MAX_ADDR_LENGTH:
                raise DecodeError("invite address too long")
            addrs.append(_addrs.parse(addr))
        else:
            raise DecodeError(f"invite: unexpected field {fnum}")
    if folder is None or len(folder) != FOLDER_ID_BYTES:
        raise DecodeError("invite without a valid folder id")
    if not writers or len(set(writers)) != len(writers):
        raise DecodeError("invite without writers, or with one listed twice")
    return Invite(folder, tuple(writers), tuple(addrs))


class FolderConflict(FileshareError):
    """The directory or folder id is already synced differently."""


def resolve_config(
    directory: Path,
    me: PeerId,
    *,
    join: str | None = None,
    folder: str | None = None,
    allow: Sequence[str] = (),
) -> tuple[FolderConfig, bool, list[Multiaddr]]:
    """The folder config of ``directory`` (joined, created or loaded and saved there), whether it
    is new, and the invite's addresses. Raises ``DecodeError`` for bad input."""
    try:
        writers = frozenset(PeerId.from_string(a) for a in allow)
    except (DecodeError, ValueError) as exc:
        raise DecodeError(f"allow: {exc}") from None
    existing = FolderConfig.load(directory)
    if join:
        invite = parse_invite(join)
        if existing is not None and existing.folder != invite.folder:
            raise FolderConflict(f"{directory} already syncs folder {existing.id_text}")
        config = FolderConfig(invite.folder, invite.config.writers | writers)
        config.save(directory)
        return config, existing is None, list(invite.addrs)
    if existing is None:
        config = FolderConfig.create(me, writers)
        if folder:
            config = FolderConfig(parse_folder_id(folder), config.writers)
        config.save(directory)
        return config, True, []
    if folder and folder != existing.id_text:
        raise FolderConflict(f"{directory} already syncs folder {existing.id_text}")
    if not existing.writers.issuperset(writers):
        existing = FolderConfig(existing.folder, existing.writers | writers)
        existing.save(directory)
    return existing, False, []
