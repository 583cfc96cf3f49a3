"""Shared CLI plumbing: common options, output helpers, error handling."""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
import platformdirs

F = TypeVar("F", bound=Callable[..., Any])


def default_repo() -> Path:
    env = os.environ.get("FILESHARE_REPO")
    if env:
        return Path(env).expanduser()
    from .config import load_config  # `repo = ...` in the config file

    return load_config().repo or Path(platformdirs.user_data_dir("fileshare", appauthor=False))


@dataclass
class Options:
    repo: Path
    json: bool = False
    debug: bool = False


def _store(ctx: click.Context, key: str, value: Any) -> None:
    obj = ctx.ensure_object(dict)
    if value not in (None, False):
        obj[key] = value


def common_options(func: F) -> F:
    """Adds --repo, --json and --debug to a command (they may also come before the command)."""

    @click.option(
        "--repo",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Node repository (blocks, identity, metadata). Env: FILESHARE_REPO.",
    )
    @click.option("--json", "as_json", is_flag=True, default=False, help="Machine-readable output.")
    @click.option("--debug", is_flag=True, default=False, help="Show tracebacks and debug logs.")
    @functools.wraps(func)
    def wrapper(*args: Any, repo: Path | None, as_json: bool, debug: bool, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        root = ctx.find_root()
        _store(root, "repo", repo)
        _store(root, "json", as_json)
        _store(root, "debug", debug)
        return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def options() -> Options:
    obj = click.get_current_context().find_root().ensure_object(dict)
    repo = obj.get("repo") or default_repo()
    return Options(
        repo=Path(repo).expanduser(), json=bool(obj.get("json")), debug=bool(obj.get("debug"))
    )


def emit(data: dict[str, Any], text: str | None = None) -> None:
    """Print one result: a JSON line with --json, else ``text`` (or key: value lines)."""
    if options().json:
        print(json.dumps(data, separators=(",", ":")), flush=True)
    else:
        if text is None:
            text = "\n".join(f"{k}: {v}" for k, v in data.items())
        print(text, flush=True)


def is_terminal() -> bool:
    return sys.stderr.isatty() and not options().json


async def wait_for_stop(signals: AsyncIterator[int]) -> None:
    """Return at the first signal from ``trio.open_signal_receiver`` (SIGINT/SIGTERM), logged."""
    async for signum in signals:
        logging.getLogger("fileshare.cli").info(
            "received %s, shutting down", signal.Signals(signum).name
        )
        return
