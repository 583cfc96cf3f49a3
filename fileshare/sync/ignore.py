"""``.fileshareignore``: gitignore patterns (via ``pathspec``) naming files a node does not sync.

The file sits at the folder root and is itself never synced (like Syncthing's ``.stignore``, each
node keeps its own). The reserved ``.fileshare/`` area is always ignored. An ignored path is neither
shared nor written when a peer's snapshot has it.
"""

from __future__ import annotations

from pathlib import Path

import pathspec

from .paths import RESERVED_DIR

IGNORE_FILE = ".fileshareignore"
MAX_IGNORE_BYTES = 256 * 1024  # a larger ignore file is read only up to here


class IgnoreRules:
    """Compiled ignore patterns. ``matches(path, is_dir)`` takes a '/'-separated relative path."""

    def __init__(self, lines: list[str] | None = None) -> None:
        self.lines = list(lines or [])
        self._spec = pathspec.GitIgnoreSpec.from_lines(self.lines)

    @classmethod
    def load(cls, root: Path | str) -> IgnoreRules:
        """Read ``root/.fileshareignore`` (missing means no patterns)."""
        path = Path(root) / IGNORE_FILE
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_IGNORE_BYTES)
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            return cls()
        return cls(raw.decode("utf-8", "replace").splitlines())

    def matches(self, path: str, is_dir: bool = False) -> bool:
        """True if ``path`` is not to be synced."""
        first = path.split("/", 1)[0]
        if first == RESERVED_DIR or path == IGNORE_FILE:
            return True
        return bool(self._spec.match_file(path + "/" if is_dir else path))

    __call__ = matches
