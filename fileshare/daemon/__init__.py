"""The long-running daemon's local servers: the control API and the trustless gateway.

``serve_daemon(node, api=..., gateway=...)`` (started with ``nursery.start``) writes a fresh API
token to ``<repo>/api.token`` (mode 0600), listens, and reports the two URLs.
``fileshare.daemon.client`` finds them again through ``<repo>/daemon.json``.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from ..errors import FileshareError
from ..node import Node
from .api import Api
from .gateway import Gateway
from .http import HTTPServer

log = logging.getLogger("fileshare.daemon")

TOKEN_FILE = "api.token"
DEFAULT_API = "127.0.0.1:0"
DEFAULT_GATEWAY = "127.0.0.1:0"


def parse_hostport(text: str) -> tuple[str, int]:
    """``"127.0.0.1:5001"``, ``"[::1]:0"``, ``"localhost:8080"`` or a bare port ``"8080"``."""
    text = text.strip()
    if text.isdigit():
        host, port_text = "127.0.0.1", text
    elif text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise FileshareError(f"{text!r}: expected [IPv6]:PORT")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise FileshareError(f"{text!r}: expected HOST:PORT (e.g. 127.0.0.1:0)")
    if not port_text.isdigit() or int(port_text) > 65535:
        raise FileshareError(f"{text!r}: the port must be a number 0-65535")
    return host, int(port_text)


def http_url(host: str, port: int) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"http://[{host}]:{port}"
    except ValueError:
        pass
    return f"http://{host}:{port}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def write_token(repo_path: Path) -> str:
    """A new random API token in ``<repo>/api.token``, readable by this user only."""
    token = secrets.token_urlsafe(32)
    path = repo_path / TOKEN_FILE
    tmp = path.with_name(f".{TOKEN_FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (token + "\n").encode("ascii"))
    finally:
        os.close(fd)
    tmp.replace(path)
    return token


def read_token(repo_path: Path) -> str:
    try:
        return (repo_path / TOKEN_FILE).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise FileshareError(f"cannot read the API token {repo_path / TOKEN_FILE}: {exc}") from None


@dataclass(slots=True)
class DaemonServers:
    api: Api
    api_url: str
    gateway_url: str | None

    def info(self) -> dict[str, Any]:
        """What goes into ``daemon.json`` next to the node's own fields."""
        return {"api": self.api_url, "gateway": self.gateway_url}


async def serve_daemon(
    node: Node,
    *,
    api: tuple[str, int] = ("127.0.0.1", 0),
    gateway: tuple[str, int] | None = ("127.0.0.1", 0),
    task_status: Any = trio.TASK_STATUS_IGNORED,  # trio.TaskStatus[DaemonServers]
) -> None:
    """Run the control API (and the gateway unless None) until cancelled."""
    for name, where in (("API", api), ("gateway", gateway)):
        if where is not None and not is_loopback(where[0]):
            log.warning("the %s listens on %s, reachable from other machines", name, where[0])
    token = write_token(node.repo.path)
    control = Api(node, token)
    async with trio.open_nursery() as nursery:
        api_server = HTTPServer(control.handle, name="api")
        try:
            bound = await nursery.start(api_server.serve, api[0], api[1])
            control.api_url = http_url(*bound[0])
            if gateway is not None:
                gw_server = HTTPServer(Gateway(node.repo).handle, name="gateway")
                gw_bound = await nursery.start(gw_server.serve, gateway[0], gateway[1])
                control.gateway_url = http_url(*gw_bound[0])
        except OSError as exc:
            raise FileshareError(
                f"cannot listen for the API or gateway: {exc.strerror or exc}"
            ) from None
        task_status.started(DaemonServers(control, control.api_url, control.gateway_url))


__all__ = [
    "DEFAULT_API",
    "DEFAULT_GATEWAY",
    "TOKEN_FILE",
    "DaemonServers",
    "http_url",
    "parse_hostport",
    "read_token",
    "serve_daemon",
    "write_token",
]
