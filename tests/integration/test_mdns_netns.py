"""mDNS discovery between two `fileshare daemon` processes in network namespaces of their own.

The test builds its own isolated link, so no packet reaches any real network:

    netns fs-mdns-a-<rand>  [veth fsm<rand>a 198.18.0.1/24] <-> [veth fsm<rand>b 198.18.0.2/24]
    netns fs-mdns-b-<rand>

(198.18.0.0/15 is the benchmarking range, RFC 2544.) lo and the veth ends are brought up; no route
is added: the service picks the interface of each announced address for its multicast itself.
A daemon runs in each namespace (`ip netns exec`), listening on its veth address only; with
`--debug` the mDNS service logs ``mdns: discovered <PeerId>`` and ``mdns: connected to <PeerId>``
on stderr. The namespaces (and with them the veth pair) are deleted in a ``finally`` block.

Needs root and a kernel that allows ``ip netns add`` (iproute2); otherwise the test is skipped
with the reason.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..procutil import ENV, ROOT, stop_process, wait_until

DISCOVERY_TIMEOUT = 20.0  # seconds for both daemons to discover and connect to each other
QUIET_PERIOD = 4.0  # seconds a --no-mdns daemon must stay undiscovered

pytestmark = pytest.mark.slow


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)


def _must(*args: str) -> None:
    res = _ip(*args)
    if res.returncode:
        raise AssertionError(f"ip {' '.join(args)} failed: {res.stderr.strip()}")


@dataclass
class Link:
    namespaces: tuple[str, str]
    addrs: tuple[str, str]


def _skip_reason() -> str | None:
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (euid 0)"
    return None


@pytest.fixture
def link() -> Iterator[Link]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    tag = secrets.token_hex(3)
    ns_a, ns_b = f"fs-mdns-a-{tag}", f"fs-mdns-b-{tag}"
    veth_a, veth_b = f"fsm{tag}a", f"fsm{tag}b"  # interface names: at most 15 characters
    created: list[str] = []
    try:
        for ns in (ns_a, ns_b):
            res = _ip("netns", "add", ns)
            if res.returncode:
                pytest.skip(f"`ip netns add` is not permitted here: {res.stderr.strip()}")
            created.append(ns)
        # both ends are created directly inside the namespaces: nothing touches the root netns
        _must("link", "add", veth_a, "netns", ns_a, "type", "veth", "peer", "name", veth_b,
              "netns", ns_b)  # fmt: skip
        for ns, dev, addr in ((ns_a, veth_a, "198.18.0.1"), (ns_b, veth_b, "198.18.0.2")):
            _must("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _must("-n", ns, "link", "set", "lo", "up")
            _must("-n", ns, "link", "set", dev, "up")
        yield Link((ns_a, ns_b), ("198.18.0.1", "198.18.0.2"))
    finally:
        for ns in created:
            _ip("netns", "del", ns)


class Daemon:
    """`fileshare --debug daemon --listen /ip4/<addr>/tcp/0` inside a namespace."""

    def __init__(self, ns: str, addr: str, repo: Path, *extra: str) -> None:
        self.log_path = repo.with_suffix(".stderr")
        self.log = self.log_path.open("w")
        cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "fileshare", "--debug"]
        cmd += ["--repo", str(repo), "daemon", "--listen", f"/ip4/{addr}/tcp/0", *extra]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=ROOT, env=ENV
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()  # the first listen address
        match = re.fullmatch(r"/ip4/[0-9.]+/tcp/\d+/p2p/(\w+)", line)
        assert match, f"unexpected daemon output {line!r}; stderr: {self.stderr()}"
        self.peer_id = match.group(1)

    def stderr(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc, 10, must_stop=False)
        self.log.close()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    try:
        yield started
    finally:
        for d in started:
            d.stop()


def test_two_daemons_discover_each_other(link: Link, daemons: list[Daemon], tmp_path: Path) -> None:
    a = Daemon(link.namespaces[0], link.addrs[0], tmp_path / "a")
    daemons.append(a)
    b = Daemon(link.namespaces[1], link.addrs[1], tmp_path / "b")
    daemons.append(b)

    def done() -> bool:
        la, lb = a.stderr(), b.stderr()
        return (
            f"mdns: discovered {b.peer_id} at /ip4/{link.addrs[1]}/tcp/" in la
            and f"mdns: discovered {a.peer_id} at /ip4/{link.addrs[0]}/tcp/" in lb
            and (f"mdns: connected to {b.peer_id}" in la or f"mdns: connected to {a.peer_id}" in lb)
        )

    wait_until(
        done,
        lambda: (
            f"mutual discovery\n--- a ---\n{a.stderr()[-4000:]}\n--- b ---\n{b.stderr()[-4000:]}"
        ),
        DISCOVERY_TIMEOUT,
        interval=0.2,
    )
    for d in (a, b):
        assert "Traceback" not in d.stderr()


def test_no_mdns_flag_turns_discovery_off(
    link: Link, daemons: list[Daemon], tmp_path: Path
) -> None:
    quiet = Daemon(link.namespaces[0], link.addrs[0], tmp_path / "quiet", "--no-mdns")
    daemons.append(quiet)
    loud = Daemon(link.namespaces[1], link.addrs[1], tmp_path / "loud")
    daemons.append(loud)
    # the mDNS daemon is up and querying; the other one must neither answer nor query
    wait_until(
        lambda: "mdns: announcing" in loud.stderr(), "mDNS announcing", DISCOVERY_TIMEOUT, 0.2
    )
    time.sleep(QUIET_PERIOD)
    assert f"mdns: discovered {quiet.peer_id}" not in loud.stderr()
    assert "mdns:" not in quiet.stderr()
