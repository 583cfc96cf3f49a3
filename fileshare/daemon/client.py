"""A blocking client for the daemon's control API (used by the CLI).

``find_daemon(repo)`` reads ``<repo>/daemon.json`` (pid and ``api`` URL) and ``<repo>/api.token``;
it returns None when no daemon with an API runs on that repository, so the caller runs a node in
process instead. Failures come back as ``FileshareError`` subclasses with the daemon's message.
"""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from ..errors import DecodeError, FileshareError, NotFound, VerificationError
from ..node import DAEMON_INFO_FILE
from . import read_token

Json = dict[str, Any]
CALL_TIMEOUT = 60.0  # seconds for a quick call (a job without progress waits as long as it runs)


class DaemonGone(FileshareError):
    """daemon.json names a live process whose API does not answer."""


class ApiError(FileshareError):
    """The daemon refused or failed a call; ``status`` is the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _error(status: int, message: str) -> FileshareError:
    if status == 404:
        return NotFound(message)
    if status == 409:
        return VerificationError(message)
    if status == 400:
        return DecodeError(message)
    return ApiError(status, message)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(slots=True)
class DaemonClient:
    url: str
    token: str
    pid: int = 0
    info: Json = field(default_factory=dict)

    def _connect(self, timeout: float | None) -> http.client.HTTPConnection:
        parts = urlsplit(self.url)
        return http.client.HTTPConnection(
            parts.hostname or "127.0.0.1", parts.port, timeout=timeout
        )

    def _request(
        self, method: str, path: str, body: Json | None, timeout: float | None
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = self._connect(timeout)
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, "/api/v0" + path, body=data, headers=headers)
            return conn, conn.getresponse()
        except OSError as exc:
            conn.close()
            raise DaemonGone(
                f"the daemon (pid {self.pid}) does not answer at {self.url}: "
                f"{exc.strerror or exc}; restart it with `fileshare daemon`"
            ) from None

    def call(
        self,
        method: str,
        path: str,
        body: Json | None = None,
        *,
        params: dict[str, str] | None = None,
        timeout: float | None = CALL_TIMEOUT,
    ) -> Json:
        """One request; the decoded JSON answer, or the daemon's error raised."""
        if params:
            path = f"{path}?{urlencode(params)}"
        conn, resp = self._request(method, path, body, timeout)
        try:
            raw = resp.read()
        except OSError as exc:
            raise DaemonGone(f"the daemon at {self.url} closed the connection: {exc}") from None
        finally:
            conn.close()
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {"error": raw[:200].decode("utf-8", "replace")}
        if resp.status >= 400:
            raise _error(resp.status, str(data.get("error") or f"HTTP {resp.status}"))
        if not isinstance(data, dict):
            raise ApiError(resp.status, "the daemon answered something other than a JSON object")
        return data

    def job(self, path: str, body: Json, on_event: Callable[[Json], None] | None = None) -> Json:
        """A long call streamed as NDJSON: progress events to ``on_event``, the outcome returned."""
        conn, resp = self._request("POST", path, {**body, "progress": True}, None)
        try:
            if resp.status >= 400:
                raw = resp.read()
                try:
                    message = str(json.loads(raw).get("error"))
                except (ValueError, AttributeError):
                    message = f"HTTP {resp.status}"
                raise _error(resp.status, message)
            while True:
                try:
                    line = resp.readline()
                except OSError as exc:
                    raise DaemonGone(f"the daemon at {self.url} went away: {exc}") from None
                if not line:
                    raise DaemonGone(f"the daemon at {self.url} stopped before the job finished")
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                kind = event.pop("event", None)
                if kind == "done":
                    return dict(event)
                if kind == "error":
                    raise _error(int(event.get("status", 500)), str(event.get("error")))
                if on_event is not None:
                    on_event(event)
        finally:
            conn.close()


def find_daemon(repo: Path) -> DaemonClient | None:
    """The running daemon's API on ``repo``, or None when none runs (or it has no API)."""
    repo = Path(repo).expanduser()
    try:
        info = json.loads((repo / DAEMON_INFO_FILE).read_text(encoding="utf-8"))
        pid = int(info["pid"])
        url = info.get("api")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(url, str) or not url or not _alive(pid):
        return None
    return DaemonClient(url, read_token(repo), pid, info)
