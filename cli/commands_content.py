"""Content commands: add, share, fetch, ls, verify, gc, pin, unpin.

`share` imports a file and serves it (bitswap) until interrupted; `fetch` writes a file from the
store, fetching what is missing from peers first (``fileshare.fetch``).
"""

from __future__ import annotations

import contextlib
import logging
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import trio
from multiaddr import Multiaddr

from fileshare.content.cid import CID, HASH_NAMES
from fileshare.content.ingest import ImportResult, import_file
from fileshare.content.layout import DEFAULT_PROFILE, PROFILES, Layout, make_layout
from fileshare.errors import DecodeError, NotFound, VerificationError
from fileshare.fetch import DEFAULT_STALL_TIMEOUT, FetchProgress, FetchResult
from fileshare.limits import MIB
from fileshare.node import open_node, read_daemon_addrs
from fileshare.repo import Pin, Repo, pin_cid

from .commands_daemon import running_daemon
from .commands_net import MULTIADDR, _listen_defaults, check_listen
from .common import common_options, emit, is_terminal, options, wait_for_stop

log = logging.getLogger("fileshare.cli")

ProgressFn = Callable[[int, int], None]

_SIZE = re.compile(r"^\s*(\d+)\s*(k|kb|kib|m|mb|mib)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from "262144", "256KiB", "256k" or "1MiB" (binary units)."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (use e.g. 262144, 256KiB or 1MiB)")
    unit = (m.group(2) or "").lower()[:1]
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[unit]


def parse_cid(text: str) -> CID:
    try:
        return CID.parse(text)
    except DecodeError as exc:
        if "malformed CID" in str(exc):
            raise
        raise DecodeError(f"malformed CID {text!r}: {exc}") from None


def open_repo() -> Repo:
    return Repo.open(options().repo)


@contextlib.contextmanager
def progress_bar(description: str) -> Iterator[ProgressFn | None]:
    """A rich progress bar on stderr when it is a terminal (and not --json); else None."""
    if not is_terminal():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task(description, total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total or None)

    with bar:
        yield update


def layout_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """--hash, --profile and --chunk-size."""
    func = click.option(
        "--chunk-size",
        default=None,
        metavar="N",
        help="Bytes per chunk (e.g. 262144, 256KiB; at most 1MiB). Default: the profile's.",
    )(func)
    func = click.option(
        "--profile",
        type=click.Choice(list(PROFILES)),
        default=DEFAULT_PROFILE,
        show_default=True,
        help="DAG layout (IPIP-499 profile).",
    )(func)
    func = click.option(
        "--hash",
        "hash_name",
        type=click.Choice(list(HASH_NAMES)),
        default="blake3",
        show_default=True,
        help="Hash function of the CIDs.",
    )(func)
    return func


def build_layout(hash_name: str, profile: str, chunk_size: str | None) -> Layout:
    try:
        size = parse_size(chunk_size) if chunk_size is not None else None
        return make_layout(profile, hash_name, size)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--chunk-size'") from None


async def add_file(
    repo: Repo, path: Path, layout: Layout, *, shared: bool, progress: ProgressFn | None = None
) -> ImportResult:
    """Import, pin and record ``path`` (what `add` and `share` do before any networking)."""
    return await import_file(repo, path, layout, progress, shared=shared)


def _run_add(
    file: Path, hash_name: str, profile: str, chunk_size: str | None, shared: bool
) -> None:
    layout = build_layout(hash_name, profile, chunk_size)
    client = running_daemon()
    if client is not None:  # the daemon imports it (and, shared, provides and announces it)
        body = {
            "path": str(file.resolve()),
            "hash": hash_name,
            "profile": profile,
            "chunk_size": layout.chunk_size,
            "share": shared,
        }
        with progress_bar(f"adding {file.name}") as progress:
            on_event = _bytes_progress(progress)
            done = client.job("/add", body, on_event)
        data = {k: done[k] for k in ("cid", "name", "size", "blocks")}
        emit(data, str(done["cid"]))
        return
    with open_repo() as repo, progress_bar(f"adding {file.name}") as progress:
        result = trio.run(lambda: add_file(repo, file, layout, shared=shared, progress=progress))
    data = {
        "cid": str(result.root),
        "name": file.name,
        "size": result.size,
        "blocks": result.block_count,
    }
    emit(data, str(result.root))


def _bytes_progress(progress: ProgressFn | None) -> Callable[[dict[str, Any]], None] | None:
    if progress is None:
        return None
    return lambda e: progress(int(e.get("bytes_done", 0)), int(e.get("bytes_total", 0)))


@click.command("add")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=True))
@layout_option
@common_options
def add(file: Path, hash_name: str, profile: str, chunk_size: str | None) -> None:
    """Import FILE into the store, pin it and print its root CID."""
    _run_add(file, hash_name, profile, chunk_size, shared=False)


@click.command("share")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=True))
@layout_option
@click.option(
    "--listen",
    "listen",
    multiple=True,
    type=MULTIADDR,
    help="Listen multiaddr (repeatable). Default: the daemon's (/ip4/0.0.0.0/tcp/4001, ...).",
)
@click.option(
    "--peer", "peers", multiple=True, type=MULTIADDR, help="Peer multiaddr to dial (repeatable)."
)
@click.option(
    "--max-rate",
    default=None,
    metavar="RATE",
    help="Cap on the bytes per second we send (e.g. 10MiB). Default: no cap.",
)
@common_options
def share(
    file: Path,
    hash_name: str,
    profile: str,
    chunk_size: str | None,
    listen: tuple[Multiaddr, ...],
    peers: tuple[Multiaddr, ...],
    max_rate: str | None,
) -> None:
    """Import FILE and serve it until SIGINT/SIGTERM: prints the root CID, then our addresses.

    When a daemon runs on this repository it serves the file: share prints the CID (and the
    daemon's addresses) and returns.
    """
    layout = build_layout(hash_name, profile, chunk_size)
    try:
        rate = parse_size(max_rate) if max_rate is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--max-rate'") from None
    check_listen(listen)
    daemon_addrs = read_daemon_addrs(options().repo)
    if daemon_addrs is not None:
        _run_add(file, hash_name, profile, chunk_size, shared=True)  # via its API when it has one
        for text in daemon_addrs:
            emit({"addr": text}, text)
        return
    trio.run(_run_share, file, layout, listen, peers, rate)


async def _run_share(
    file: Path,
    layout: Layout,
    listen: tuple[Multiaddr, ...],
    peers: tuple[Multiaddr, ...],
    rate: int | None,
) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_node(options().repo) as node:
            node.bitswap.send_rate = rate or None
            if listen:
                await node.host.listen(listen)
            else:
                await _listen_defaults(node)
            with progress_bar(f"adding {file.name}") as progress:
                result = await node.share(file, layout, progress=progress)
            emit(
                {
                    "cid": str(result.root),
                    "name": file.name,
                    "size": result.size,
                    "blocks": result.block_count,
                },
                str(result.root),
            )
            for addr in node.full_addrs():
                emit({"addr": str(addr)}, str(addr))
            node.write_daemon_info()
            try:
                for peer in peers:
                    node.nursery.start_soon(node.connect, peer)
                await wait_for_stop(signals)
            finally:
                node.remove_daemon_info()


async def fetch_file(
    root: CID,
    out: Path,
    peers: tuple[Multiaddr, ...] = (),
    stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    on_progress: Callable[[FetchProgress], None] | None = None,
) -> FetchResult:
    """Fetch ``root`` into ``out``: from the store, else from the given and connected peers."""
    async with open_node(options().repo) as node:
        return await node.fetch(
            root, out, peers=peers, on_progress=on_progress, stall_timeout=stall_timeout
        )


@contextlib.contextmanager
def fetch_progress(description: str) -> Iterator[Callable[[FetchProgress], None] | None]:
    """Fetch progress: a rich bar on a terminal (stderr), JSON lines with --json, else nothing."""
    if options().json:

        def as_json(p: FetchProgress) -> None:
            emit({"event": "progress", **p.to_json()})

        yield as_json
        return
    if not is_terminal():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(binary_units=True),
        TextColumn("{task.fields[stats]}"),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task(description, total=None, stats="")

    def update(p: FetchProgress) -> None:
        eta = "--" if p.eta is None else f"{int(p.eta) // 60}:{int(p.eta) % 60:02d}"
        stats = (
            f"{p.blocks_done}/{p.blocks_known} blocks  {p.rate / MIB:.1f} MiB/s  "
            f"ETA {eta}  {p.peers} peer{'' if p.peers == 1 else 's'}"
        )
        bar.update(task, completed=p.file_bytes_done, total=p.file_size, stats=stats)

    with bar:
        yield update


@click.command("fetch")
@click.argument("cid")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="File to write (default: ./<CID>). Written to a temporary file, then renamed. A "
    "directory CID (e.g. a sync folder's snapshot) is written as a new directory tree here.",
)
@click.option(
    "--peer",
    "peers",
    multiple=True,
    type=MULTIADDR,
    help="Multiaddr of a peer that has the file (repeatable).",
)
@click.option(
    "--stall-timeout",
    default=DEFAULT_STALL_TIMEOUT,
    show_default=True,
    type=click.FloatRange(0.1, 86400),
    help="Give up after this many seconds without receiving a block.",
)
@common_options
def fetch(
    cid: str, output: Path | None, peers: tuple[Multiaddr, ...], stall_timeout: float
) -> None:
    """Write the file (or directory tree) with root CID, fetching missing blocks from peers;
    verifies every block."""
    root = parse_cid(cid)
    out = output if output is not None else Path(str(root))
    client = running_daemon()
    if client is not None:  # the daemon fetches (its peers and DHT table are warm)
        body = {
            "cid": str(root),
            "out": str(out.absolute()),
            "peers": [str(p) for p in peers],
            "stall_timeout": stall_timeout,
        }
        with fetch_progress(f"fetching {out.name}") as progress:
            on_event = None if progress is None else (lambda e: progress(FetchProgress(**e)))
            done = client.job("/fetch", body, on_event)
        emit({**done, "path": str(out)}, str(out))
        return
    with fetch_progress(f"fetching {out.name}") as progress:
        result = trio.run(fetch_file, root, out, peers, stall_timeout, progress)
    emit({"cid": str(root), **result.to_json(), "path": str(out)}, str(out))


@click.command("ls")
@common_options
def ls() -> None:
    """List pinned and shared files."""
    client = running_daemon()
    if client is not None:
        pins = [_pin_from_json(p) for p in client.call("GET", "/ls")["shares"]]
    else:
        with open_repo() as repo:
            pins = repo.pins()
    if options().json:
        emit({"shares": [p.to_json() for p in pins]})
        return
    lines = [f"{p.cid}  {p.size:>12}  {'shared' if p.shared else 'pinned'}  {p.name}" for p in pins]
    emit({}, "\n".join(lines) if lines else "no shares")


@click.command("verify")
@click.option(
    "--remove-corrupt", is_flag=True, help="Delete corrupt blocks (then add or fetch them again)."
)
@common_options
def verify(remove_corrupt: bool) -> None:
    """Check every stored block against its hash and every pinned DAG for missing blocks."""
    with open_repo() as repo:
        report = repo.verify(remove_corrupt=remove_corrupt)
    data = {
        "checked": report.checked,
        "corrupt": [str(c) for c in report.corrupt],
        "missing": [str(c) for c in report.missing],
        "removed": report.removed,
    }
    if options().json:
        emit(data)
    elif not report.ok:
        lines = [f"corrupt {c}" for c in report.corrupt] + [f"missing {c}" for c in report.missing]
        emit(data, "\n".join(lines))
    if report.ok:
        if not options().json:
            emit(data, f"{report.checked} blocks ok")
        return
    parts = []
    if report.corrupt:
        parts.append(f"{len(report.corrupt)} corrupt block(s) (first: {report.corrupt[0]})")
    if report.missing:
        parts.append(f"{len(report.missing)} missing block(s) (first: {report.missing[0]})")
    hint = (
        "removed the corrupt ones; add or fetch the files again"
        if remove_corrupt
        else "run `fileshare verify --remove-corrupt`, then add or fetch the files again"
    )
    raise VerificationError(f"{' and '.join(parts)} in {repo.path}; {hint}")


@click.command("gc")
@common_options
def gc() -> None:
    """Delete blocks that no pin needs."""
    client = running_daemon()
    if client is not None:
        data = client.call("POST", "/gc", {}, timeout=None)
    else:
        with open_repo() as repo:
            result = repo.gc()
        data = result.to_json()
    emit(
        data,
        f"removed {data['removed_blocks']} blocks ({data['removed_bytes']} bytes), "
        f"kept {data['kept_blocks']}",
    )


@click.command("pin")
@click.argument("cid")
@click.option("--name", default="", help="A name to list it under.")
@common_options
def pin(cid: str, name: str) -> None:
    """Pin a file whose blocks are all in the store (gc keeps pinned files)."""
    root = parse_cid(cid)
    client = running_daemon()
    if client is not None:
        client.call("POST", "/pin", {"cid": str(root), "name": name}, timeout=None)
        emit({"cid": str(root), "pinned": True}, f"pinned {root}")
        return
    with open_repo() as repo:
        pin_cid(repo, root, name)
    emit({"cid": str(root), "pinned": True}, f"pinned {root}")


@click.command("unpin")
@click.argument("cid")
@common_options
def unpin(cid: str) -> None:
    """Unpin a file; `fileshare gc` then frees its blocks."""
    root = parse_cid(cid)
    client = running_daemon()
    if client is not None:
        client.call("POST", "/unpin", {"cid": str(root)})
        emit({"cid": str(root), "pinned": False}, f"unpinned {root}")
        return
    with open_repo() as repo:
        if not repo.unpin(root):
            raise NotFound(f"{root} is not pinned")
    emit({"cid": str(root), "pinned": False}, f"unpinned {root}")


def _pin_from_json(data: dict[str, Any]) -> Pin:
    return Pin(
        CID.parse(str(data["cid"])),
        str(data["name"]),
        int(data["size"]),
        str(data["hash"]),
        str(data["profile"]),
        int(data["blocks"]),
        bool(data["shared"]),
        float(data["created"]),
    )


COMMANDS: list[click.Command] = [add, share, fetch, ls, verify, gc, pin, unpin]
