"""The optional TOML config file, overridden by environment variables, overridden by flags.

Location: ``$FILESHARE_CONFIG``, else ``<platform config dir>/fileshare/config.toml``
(``~/.config/fileshare/config.toml`` on Linux). Every key is optional::

    repo = "~/fileshare"                         # FILESHARE_REPO
    listen = ["/ip4/0.0.0.0/tcp/4001"]           # FILESHARE_LISTEN (comma-separated)
    bootstrap = ["/ip4/192.0.2.7/tcp/4001/p2p/12D3KooW..."]   # FILESHARE_BOOTSTRAP
    topics = ["fileshare/shares/1"]              # FILESHARE_TOPICS: announcement topics relayed
    api = "127.0.0.1:5001"                       # FILESHARE_API (default 127.0.0.1:0)
    gateway = "127.0.0.1:8080"                   # FILESHARE_GATEWAY ("off" disables it)
    dht = "server"                               # FILESHARE_DHT: server or client
    mdns = true                                  # FILESHARE_MDNS: true or false

    [limits]
    max_rate = "10MiB"                           # FILESHARE_MAX_RATE: bytes/s we send
    stall_timeout = 60                           # FILESHARE_STALL_TIMEOUT: seconds (fetch)
"""

from __future__ import annotations

import functools
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from fileshare.errors import FileshareError

CONFIG_ENV = "FILESHARE_CONFIG"
_LISTS = ("listen", "bootstrap", "topics")
_STRINGS = ("repo", "api", "gateway", "dht")
_LIMITS = ("max_rate", "stall_timeout")


class ConfigError(FileshareError):
    """The config file or an environment variable holds something we cannot use."""


@dataclass(frozen=True, slots=True)
class Config:
    path: Path | None = None  # the file read, if any
    repo: Path | None = None
    listen: tuple[str, ...] = ()
    bootstrap: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()
    api: str | None = None
    gateway: str | None = None
    dht: str | None = None
    mdns: bool | None = None
    max_rate: str | None = None
    stall_timeout: float | None = None


def config_path() -> Path:
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_config_dir("fileshare", appauthor=False)) / "config.toml"


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        if os.environ.get(CONFIG_ENV):
            raise ConfigError(f"config file {path} (from ${CONFIG_ENV}) does not exist") from None
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    return data


def _check(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """Flatten ``[limits]`` and type-check every key."""
    out: dict[str, Any] = {}
    limits = data.pop("limits", {})
    if not isinstance(limits, dict):
        raise ConfigError(f"{path}: [limits] must be a table")
    for key, value in [*data.items(), *limits.items()]:
        where = f"{path}: {key}"
        if key in _LISTS:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where} must be a list of strings")
            out[key] = tuple(value)
        elif key in _STRINGS:
            if not isinstance(value, str):
                raise ConfigError(f"{where} must be a string")
            out[key] = value
        elif key == "mdns":
            if not isinstance(value, bool):
                raise ConfigError(f"{where} must be true or false")
            out[key] = value
        elif key == "max_rate" and key in limits:
            if not isinstance(value, str | int) or isinstance(value, bool):
                raise ConfigError(f'{where} must be a size such as "10MiB"')
            out[key] = str(value)
        elif key == "stall_timeout" and key in limits:
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{where} must be a positive number of seconds")
            out[key] = float(value)
        else:
            raise ConfigError(f"{where}: unknown setting")
    return out


def _from_env() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in (*_LISTS, *_STRINGS, *_LIMITS, "mdns"):
        value = os.environ.get(f"FILESHARE_{key.upper()}")
        if value is None or value == "":
            continue
        if key in _LISTS:
            out[key] = tuple(v for v in value.replace(",", " ").split() if v)
        elif key == "mdns":
            if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ConfigError("FILESHARE_MDNS must be true or false")
            out[key] = value.lower() in ("1", "true", "yes")
        elif key == "stall_timeout":
            try:
                out[key] = float(value)
            except ValueError:
                raise ConfigError("FILESHARE_STALL_TIMEOUT must be a number") from None
        else:
            out[key] = value
    return out


@functools.cache
def load_config() -> Config:
    """The config file's settings with environment overrides applied (read once per process)."""
    path = config_path()
    data = _read_file(path)
    settings = _check(path, data) if data else {}
    settings.update(_from_env())
    if "repo" in settings:
        settings["repo"] = Path(settings["repo"]).expanduser()
    if settings.get("dht") not in (None, "server", "client"):
        raise ConfigError(f"dht must be server or client, not {settings['dht']!r}")
    return Config(path=path if data else None, **settings)
