"""Content commands: add, share, fetch, ls, verify, gc, pin, unpin (local store only for now)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import trio

from fileshare.content.cid import CID, HASH_NAMES
from fileshare.content.ingest import ExportResult, ImportResult, export_file, import_file
from fileshare.content.layout import DEFAULT_PROFILE, PROFILES, Layout, make_layout
from fileshare.content.reader import GetBlock, decode_block
from fileshare.errors import DecodeError, NotFound, VerificationError
from fileshare.repo import Pin, Repo

from .common import common_options, emit, is_terminal, options

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
    with open_repo() as repo, progress_bar(f"adding {file.name}") as progress:
        result = trio.run(lambda: add_file(repo, file, layout, shared=shared, progress=progress))
    data = {
        "cid": str(result.root),
        "name": file.name,
        "size": result.size,
        "blocks": result.block_count,
    }
    emit(data, str(result.root))


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
@common_options
def share(file: Path, hash_name: str, profile: str, chunk_size: str | None) -> None:
    """Import FILE and mark it shared (for now the same as `add`; serving comes with the network)."""
    _run_add(file, hash_name, profile, chunk_size, shared=True)


def block_source(repo: Repo) -> GetBlock | None:
    """Where `fetch` gets blocks from: None means the local store. The network fetcher plugs in here."""
    return None


async def fetch_file(
    repo: Repo, root: CID, out: Path, progress: ProgressFn | None = None
) -> ExportResult:
    source = block_source(repo)
    if source is None and not await repo.blocks.has(root):
        raise NotFound(f"{root} is not in the local store (network fetch is not available yet)")
    return await export_file(repo, root, out, progress, source=source)


@click.command("fetch")
@click.argument("cid")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="File to write (default: ./<CID>). Written to a temporary file, then renamed.",
)
@common_options
def fetch(cid: str, output: Path | None) -> None:
    """Write the file with root CID to a path, verifying every block."""
    root = parse_cid(cid)
    out = output if output is not None else Path(str(root))
    with open_repo() as repo, progress_bar(f"fetching {out.name}") as progress:
        result = trio.run(fetch_file, repo, root, out, progress)
    emit({"cid": str(root), "path": str(result.path), "size": result.size}, str(result.path))


@click.command("ls")
@common_options
def ls() -> None:
    """List pinned and shared files."""
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
    with open_repo() as repo:
        result = repo.gc()
    emit(
        {
            "removed_blocks": result.removed_blocks,
            "removed_bytes": result.removed_bytes,
            "kept_blocks": result.kept_blocks,
        },
        f"removed {result.removed_blocks} blocks ({result.removed_bytes} bytes), "
        f"kept {result.kept_blocks}",
    )


@click.command("pin")
@click.argument("cid")
@click.option("--name", default="", help="A name to list it under.")
@common_options
def pin(cid: str, name: str) -> None:
    """Pin a file whose blocks are all in the store (gc keeps pinned files)."""
    root = parse_cid(cid)
    with open_repo() as repo:
        status = repo.dag_status([root])
        if status.corrupt:
            raise VerificationError(f"cannot pin {root}: block {status.corrupt[0]} is corrupt")
        if status.missing:
            raise NotFound(
                f"cannot pin {root}: {len(status.missing)} of its blocks are not in the local store"
                f" (first: {status.missing[0]})"
            )
        node = decode_block(root, repo.blocks.get_sync(root))
        hash_name = next((n for n, c in HASH_NAMES.items() if c == root.hash_code), "")
        old = repo.get_pin(root)
        record = Pin(
            root,
            name=name or (old.name if old else ""),
            size=node.filesize or 0,
            hash=hash_name,
            profile=old.profile if old else "",
            blocks=len(status.reachable),
            shared=old.shared if old else False,
        )
        repo.add_pin(record)
    emit({"cid": str(root), "pinned": True}, f"pinned {root}")


@click.command("unpin")
@click.argument("cid")
@common_options
def unpin(cid: str) -> None:
    """Unpin a file; `fileshare gc` then frees its blocks."""
    root = parse_cid(cid)
    with open_repo() as repo:
        if not repo.unpin(root):
            raise NotFound(f"{root} is not pinned")
    emit({"cid": str(root), "pinned": False}, f"unpinned {root}")


COMMANDS: list[click.Command] = [add, share, fetch, ls, verify, gc, pin, unpin]
