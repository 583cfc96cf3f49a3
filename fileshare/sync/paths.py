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
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import DecodeError, FileshareError
from ..limits import SYNC_MAX_DEPTH, SYNC_MAX_NAME_BYTES, SYNC_MAX_PATH_BYTES

RESERVED_DIR = ".fileshare"
TMP_DIR = f"{RESERVED_DIR}/tmp"
TRASH_DIR = f"{RESERVED_DIR}/trash"

_DRIVE = re.compile(r"^[A-Za-z]:")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
FSYNC_THREADS = 8  # fsyncs of written files in flight at once (see FolderRoot.write_files)


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

    def write_files(
        self,
        files: Sequence[tuple[str, bytes, int, int]],
        check: Callable[[str, os.stat_result | None], None],
    ) -> list[os.stat_result | Exception]:
        """Write each ``(rel, data, mode, mtime_ns)`` into the folder, through ``.fileshare/tmp/``.

        All files are first written to new temporary files and fsynced on ``FSYNC_THREADS``
        threads (concurrent fsyncs share journal commits: several times faster than in turn).
        Then, one at a time, ``check(rel, lstat of rel or None)`` runs (raising leaves that path
        alone) and the file is renamed to ``rel``, in one walk to its directory (symlinks and a
        non-file at ``rel`` refused). Returns per file its stat, or the error that stopped it (its
        temporary file removed).
        """
        out: list[os.stat_result | Exception] = []
        dfd = self._walk(TMP_DIR.split("/"), create=True)
        try:
            synced = _write_synced(dfd, [(data, mode, mtime) for _, data, mode, mtime in files])
            for (rel, *_), item in zip(files, synced, strict=True):
                if isinstance(item, OSError):
                    out.append(item)
                    continue
                name, st = item
                try:
                    self._install_checked(dfd, name, rel, check)
                    out.append(st)
                except (FileshareError, OSError) as exc:
                    with contextlib.suppress(OSError):
                        os.unlink(name, dir_fd=dfd)
                    out.append(exc)
        finally:
            os.close(dfd)
        return out

    def _install_checked(
        self, src_dfd: int, src: str, rel: str, check: Callable[[str, os.stat_result | None], None]
    ) -> None:
        parts = check_relpath(rel).split("/")
        try:
            fd = self._walk(parts[:-1], create=False)
        except FileNotFoundError:  # a new directory: nothing there yet
            check(rel, None)
            fd = self._walk(parts[:-1], create=True)
        else:
            try:
                st: os.stat_result | None = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            except BaseException:
                os.close(fd)
                raise
            try:
                check(rel, st)
            except BaseException:
                os.close(fd)
                raise
        try:
            self._refuse_non_file(fd, parts[-1], rel)
            os.rename(src, parts[-1], src_dir_fd=src_dfd, dst_dir_fd=fd)
        finally:
            os.close(fd)

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


def _write_new(dfd: int, name: str, data: bytes, mode: int, mtime_ns: int) -> int:
    """Create ``name`` in directory ``dfd`` holding ``data``; the open descriptor."""
    fd = os.open(name, _NEW_FILE_FLAGS, 0o600, dir_fd=dfd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fchmod(fd, mode)
        os.utime(fd, ns=(mtime_ns, mtime_ns))
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dfd)
        raise
    return fd


def _write_synced(
    dfd: int, files: Sequence[tuple[bytes, int, int]]
) -> list[tuple[str, os.stat_result] | OSError]:
    """New files in directory ``dfd``, written then fsynced in parallel: (name, stat) or error."""
    written: list[tuple[str, int] | OSError] = []
    try:
        for data, mode, mtime_ns in files:
            name = uuid.uuid4().hex
            try:
                written.append((name, _write_new(dfd, name, data, mode, mtime_ns)))
            except OSError as exc:
                written.append(exc)
    except BaseException:
        for item in written:
            if not isinstance(item, OSError):
                os.close(item[1])
        raise
    fds = [item[1] for item in written if not isinstance(item, OSError)]
    n = min(FSYNC_THREADS, len(fds))
    with ThreadPoolExecutor(max(1, n)) as pool:  # one call per thread, not per file
        parts = list(pool.map(_fsync_close_all, [fds[i::n] for i in range(n)]))
    synced = iter([parts[i % n][i // n] for i in range(len(fds))])
    out: list[tuple[str, os.stat_result] | OSError] = []
    for item in written:
        if isinstance(item, OSError):
            out.append(item)
            continue
        st = next(synced)
        if isinstance(st, OSError):
            with contextlib.suppress(OSError):
                os.unlink(item[0], dir_fd=dfd)
            out.append(st)
        else:
            out.append((item[0], st))
    return out


def _fsync_close_all(fds: list[int]) -> list[os.stat_result | OSError]:
    """fsync, stat and close each descriptor (all closed whatever happens)."""
    out: list[os.stat_result | OSError] = []
    for fd in fds:
        try:
            os.fsync(fd)
            out.append(os.fstat(fd))
        except OSError as exc:
            out.append(exc)
        finally:
            os.close(fd)
    return out
