"""Path safety for synced folders: which relative names are acceptable, and writing only inside.

A synced path is relative, '/'-separated, valid UTF-8, with no empty, '.' or '..' component, no NUL
or backslash, no drive letter, within the length limits, and outside the reserved ``.fileshare/``
area. ``check_relpath`` enforces that (raising ``UnsafePath``, a ``DecodeError``, so snapshot
decoding raises only ``DecodeError``).

``FolderRoot`` does every write of the sync engine: it holds a descriptor of the folder and walks
to a parent directory one component at a time with ``O_NOFOLLOW``, so a symlink anywhere on the
way (even one planted after a check) is refused instead of followed; renames and unlinks then
name only the last component relative to that descriptor. Nothing is written outside the folder.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from ..errors import DecodeError, FileshareError
from ..limits import SYNC_MAX_DEPTH, SYNC_MAX_NAME_BYTES, SYNC_MAX_PATH_BYTES

RESERVED_DIR = ".fileshare"
TMP_DIR = f"{RESERVED_DIR}/tmp"
TRASH_DIR = f"{RESERVED_DIR}/trash"

_DRIVE = re.compile(r"^[A-Za-z]:")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(DecodeError):
    """A path that must not be synced (escapes the folder, reserved, or malformed)."""


def check_relpath(path: str) -> str:
    """Return ``path`` if it is a safe synced path, else raise ``UnsafePath``."""
    if not isinstance(path, str) or not path:
        raise UnsafePath("empty path")
    try:
        raw = path.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafePath(f"path {path!r} is not valid UTF-8") from None
    if len(raw) > SYNC_MAX_PATH_BYTES:
        raise UnsafePath(f"path of {len(raw)} bytes exceeds {SYNC_MAX_PATH_BYTES}")
    if "\x00" in path or "\\" in path:
        raise UnsafePath(f"path {path!r} contains NUL or a backslash")
    if path.startswith("/") or _DRIVE.match(path):
        raise UnsafePath(f"path {path!r} is absolute")
    parts = path.split("/")
    if len(parts) > SYNC_MAX_DEPTH:
        raise UnsafePath(f"path {path[:80]!r}... is deeper than {SYNC_MAX_DEPTH} levels")
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafePath(f"path {path!r} has an empty, '.' or '..' component")
        if len(part.encode("utf-8")) > SYNC_MAX_NAME_BYTES:
            raise UnsafePath(f"a name in {path[:80]!r} exceeds {SYNC_MAX_NAME_BYTES} bytes")
    if parts[0] == RESERVED_DIR:
        raise UnsafePath(f"path {path!r} is in the reserved {RESERVED_DIR}/ area")
    return path


def is_safe_relpath(path: str) -> bool:
    try:
        check_relpath(path)
    except UnsafePath:
        return False
    return True


def resolve_inside(root: Path | str, rel: str) -> Path:
    """The absolute path of ``rel`` under ``root``, refusing one that resolves outside it.

    Symlinks are resolved (``realpath``); a name that leads outside the folder raises ``UnsafePath``.
    """
    check_relpath(rel)
    base = os.path.realpath(root)
    full = os.path.realpath(os.path.join(base, rel))
    if os.path.commonpath([base, full]) != base or full == base:
        raise UnsafePath(f"{rel!r} resolves outside the folder {base}")
    return Path(full)


class FolderRoot:
    """A synced folder opened for safe writes. Close with ``close()`` or use as a context manager."""

    def __init__(self, root: Path | str) -> None:
        self.path = Path(os.path.realpath(root))
        self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for area in (TMP_DIR, TRASH_DIR):
                os.close(self._walk(area.split("/"), create=True))
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> FolderRoot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def tmp_path(self) -> Path:
        return self.path / TMP_DIR

    # --- walking ---
    def _walk(self, parts: list[str], create: bool) -> int:
        """A descriptor of the directory ``parts`` below the root; symlinks refused."""
        fd = os.dup(self.fd)
        try:
            for i, part in enumerate(parts):
                try:
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=fd)
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        where = "/".join(parts[: i + 1])
                        raise UnsafePath(f"{where!r} is a symlink or not a directory") from None
                    raise
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd

    @contextlib.contextmanager
    def parent(self, rel: str, create: bool = False) -> Iterator[tuple[int, str]]:
        """``(dir_fd, name)`` for ``rel`` (checked); the descriptor is closed afterwards."""
        parts = check_relpath(rel).split("/")
        fd = self._walk(parts[:-1], create)
        try:
            yield fd, parts[-1]
        finally:
            os.close(fd)

    # --- queries ---
    def lstat(self, rel: str) -> os.stat_result | None:
        """``lstat`` of ``rel`` without following symlinks; None if it (or a parent) is missing."""
        try:
            with self.parent(rel) as (fd, name):
                return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except (FileNotFoundError, UnsafePath, NotADirectoryError):
            return None

    # --- writes ---
    def new_tmp_path(self, suffix: str = "") -> Path:
        """A fresh file name in ``.fileshare/tmp/`` (not created)."""
        return self.tmp_path / f"{uuid.uuid4().hex}{suffix}"

    def install(self, tmp: Path, rel: str) -> None:
        """Rename a file from ``.fileshare/tmp/`` to ``rel`` (replacing a regular file there)."""
        if tmp.parent != self.tmp_path:
            raise FileshareError(f"{tmp} is not in {self.tmp_path}")
        with self.parent(rel, create=True) as (fd, name):
            self._refuse_non_file(fd, name, rel)
            src_fd = self._walk(TMP_DIR.split("/"), create=True)
            try:
                os.rename(tmp.name, name, src_dir_fd=src_fd, dst_dir_fd=fd)
            finally:
                os.close(src_fd)

    def rename(self, src: str, dst: str) -> None:
        """Rename ``src`` to ``dst`` inside the folder; ``dst`` must not exist."""
        with self.parent(src) as (sfd, sname), self.parent(dst, create=True) as (dfd, dname):
            try:
                os.stat(dname, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            else:
                raise FileExistsError(errno.EEXIST, f"{dst} exists", dst)
            os.rename(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)

    def trash(self, rel: str) -> str:
        """Move ``rel`` into ``.fileshare/trash/`` under a unique flat name; returns that name."""
        flat = rel.replace("/", "%")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = f"{stamp}-{uuid.uuid4().hex[:8]}-{flat}"
        raw = name.encode("utf-8")[:SYNC_MAX_NAME_BYTES]
        name = raw.decode("utf-8", "ignore")
        with self.parent(rel) as (sfd, sname):
            dfd = self._walk(TRASH_DIR.split("/"), create=True)
            try:
                os.rename(sname, name, src_dir_fd=sfd, dst_dir_fd=dfd)
            finally:
                os.close(dfd)
        self.prune_empty_parents(rel)
        return name

    def prune_empty_parents(self, rel: str) -> None:
        """Remove the now-empty directories above ``rel`` (best effort, never the root)."""
        parts = rel.split("/")[:-1]
        while parts:
            try:
                with self.parent("/".join(parts)) as (fd, name):
                    os.rmdir(name, dir_fd=fd)
            except (OSError, UnsafePath):
                return
            parts.pop()

    @staticmethod
    def _refuse_non_file(fd: int, name: str, rel: str) -> None:
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"{rel!r} exists and is not a regular file; not replacing it")
