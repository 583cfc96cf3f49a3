"""Watching a folder: filesystem events (``watchfiles``, which runs under trio through anyio),
debounced, plus an initial scan, a retry when a changed file has not settled yet, and a periodic
full rescan as a safety net for missed events.

``watch_folder`` calls ``on_change(paths)`` one call at a time: ``paths`` is the set of changed
relative paths, or None for a full rescan (initial, periodic, retry). ``on_change`` returns the
seconds after which it wants to be called again (files still being written), or None.
``run_folder`` wires it to a ``SyncFolder``: scan, and publish a snapshot when the index changed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import trio
import watchfiles

from ..limits import SYNC_DEBOUNCE_MS, SYNC_RESCAN_INTERVAL
from .engine import SyncFolder
from .paths import RESERVED_DIR
from .snapshot import Snapshot

OnChange = Callable[[frozenset[str] | None], Awaitable[float | None]]
OnSnapshot = Callable[[bytes, Snapshot], Awaitable[None]]


def relevant_paths(base: str, paths: Iterable[str]) -> set[str]:
    """The '/'-separated paths relative to ``base`` of the absolute ``paths`` that lie inside it,
    outside the reserved area (a plain prefix test: this runs for every filesystem event)."""
    prefix = base + os.sep
    reserved = prefix + RESERVED_DIR
    cut = len(prefix)
    out: set[str] = set()
    for path in paths:
        if path.startswith(prefix) and not (
            path.startswith(reserved) and path[len(reserved) : len(reserved) + 1] in ("", os.sep)
        ):
            out.add(path[cut:].replace(os.sep, "/"))
    return out


async def watch_folder(
    root: Path | str,
    on_change: OnChange,
    *,
    debounce_ms: int = SYNC_DEBOUNCE_MS,
    rescan_interval: float = SYNC_RESCAN_INTERVAL,
    ready: trio.Event | None = None,
) -> None:
    """Run until cancelled; ``ready`` is set once the initial scan is done."""
    base = os.path.realpath(root)
    changed: set[str] = set()
    wake = trio.Event()

    async def watch() -> None:
        # No watch_filter: watchfiles would call it (taking the GIL) once per raw event, and
        # applying a snapshot makes several events per file; one pass per batch here instead.
        async for events in watchfiles.awatch(
            base,
            watch_filter=None,
            debounce=debounce_ms,
            step=max(1, debounce_ms // 5),
            rust_timeout=1000,
            ignore_permission_denied=True,
        ):
            rels = relevant_paths(base, [path for _kind, path in events])
            if rels:  # not only the reserved area (our own temporary files)
                changed.update(rels)
                wake.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        retry = await on_change(None)
        if ready is not None:
            ready.set()
        next_rescan = trio.current_time() + rescan_interval
        while True:
            retry_at = trio.current_time() + retry if retry is not None else math.inf
            with trio.move_on_at(min(next_rescan, retry_at)):
                await wake.wait()
            now = trio.current_time()
            paths: frozenset[str] | None = frozenset(changed) if wake.is_set() else None
            changed.clear()
            wake = trio.Event()
            if now >= next_rescan:
                paths = None
                next_rescan = now + rescan_interval
            retry = await on_change(paths)


async def run_folder(
    folder: SyncFolder,
    on_snapshot: OnSnapshot,
    *,
    debounce_ms: int = SYNC_DEBOUNCE_MS,
    rescan_interval: float = SYNC_RESCAN_INTERVAL,
    ready: trio.Event | None = None,
) -> None:
    """Watch ``folder``; after each scan that changed the index, publish via ``on_snapshot``."""

    async def on_change(_paths: frozenset[str] | None) -> float | None:
        report = await folder.scan()
        if report.changed:
            data, snap = await folder.publish()
            await on_snapshot(data, snap)
        return report.result.retry_after

    await watch_folder(
        folder.root.path,
        on_change,
        debounce_ms=debounce_ms,
        rescan_interval=rescan_interval,
        ready=ready,
    )
