"""Gossipsub and share announcements between real `fileshare` processes on 127.0.0.1.

``fileshare watch --json`` prints its listen addresses, then one JSON line per announcement; the
hidden ``fileshare pubsub-announce`` publishes one. The hostile peer is our own host sending
hand-made RPC frames.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from fileshare.content.cid import CID
from fileshare.identity.keys import PrivateKey
from fileshare.limits import PUBSUB_MAX_MESSAGE
from fileshare.net.addrs import parse
from fileshare.net.host import Connection, NetStream, open_host
from fileshare.net.yamux import StreamReset
from fileshare.protocols.pubsub.announce import (
    ANNOUNCE_TOPIC,
    Announcement,
    encode_announcement,
)
from fileshare.protocols.pubsub.rpc import (
    MESHSUB_V11,
    RPC,
    Message,
    SubOpts,
    encode_rpc,
    message_wire_size,
)
from fileshare.protocols.pubsub.service import PubsubService
from fileshare.protocols.pubsub.signing import sign_message
from fileshare.protocols.pubsub.state import GossipConfig
from fileshare.wire.protobuf import length_prefixed
from fileshare.wire.varint import encode_varint

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
LOOPBACK = "/ip4/127.0.0.1/tcp/0"
WAIT = 30.0

Json = dict[str, Any]


@dataclass
class Proc:
    """A `fileshare` child process whose stdout JSON lines are collected by a reader task."""

    name: str
    process: trio.Process
    stderr_path: Path
    lines: list[Json] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)

    async def read_stdout(self) -> None:
        assert self.process.stdout is not None
        buf = b""
        while data := await self.process.stdout.receive_some(65536):
            buf += data
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                try:
                    self.lines.append(json.loads(raw))
                except ValueError:
                    self.lines.append({"text": raw.decode(errors="replace")})
                self.changed.set()
                self.changed = trio.Event()

    async def wait_for(self, pred: Callable[[list[Json]], bool], timeout: float = WAIT) -> None:
        with trio.move_on_after(timeout):
            while not pred(self.lines):
                if self.process.returncode is not None:
                    break
                with trio.move_on_after(0.5):
                    await self.changed.wait()
            else:
                return
        raise AssertionError(
            f"{self.name}: condition not met; output {self.lines}\n{self.stderr()}"
        )

    @property
    def addr(self) -> str:
        return next(str(x["addr"]) for x in self.lines if "addr" in x)

    def announcements(self) -> list[Json]:
        return [x for x in self.lines if "cid" in x]

    def stats(self) -> dict[str, int]:
        return next((dict(x["stats"]) for x in self.lines if "stats" in x), {})

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


class Cluster:
    def __init__(self, nursery: trio.Nursery, tmp: Path) -> None:
        self.nursery, self.tmp = nursery, tmp
        self.procs: list[Proc] = []

    async def start(self, *args: str) -> Proc:
        name = f"p{len(self.procs)}"
        repo = self.tmp / name
        argv = [sys.executable, "-m", "fileshare", "--repo", str(repo), "--json", *args]
        stderr_path = self.tmp / f"{name}.stderr"
        with stderr_path.open("wb") as err:
            process = await trio.lowlevel.open_process(
                argv,
                stdout=subprocess.PIPE,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                env=ENV,
            )
        proc = Proc(name, process, stderr_path)
        self.procs.append(proc)
        self.nursery.start_soon(proc.read_stdout)
        return proc

    async def watcher(self, *peers: str) -> Proc:
        args = ["watch", "--listen", LOOPBACK, *(x for p in peers for x in ("--peer", p))]
        proc = await self.start(*args)
        await proc.wait_for(lambda lines: any("addr" in x for x in lines))
        return proc

    async def stop(self, proc: Proc) -> None:
        if proc.process.returncode is None:
            proc.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(10):
                await proc.process.wait()
        if proc.process.returncode is None:
            proc.process.kill()
            await proc.process.wait()


@asynccontextmanager
async def cluster(tmp: Path) -> AsyncIterator[Cluster]:
    async with trio.open_nursery() as nursery:
        c = Cluster(nursery, tmp)
        try:
            yield c
        finally:
            with trio.CancelScope(shield=True):
                for proc in c.procs:
                    await c.stop(proc)
            nursery.cancel_scope.cancel()


def _cid(data: bytes) -> str:
    return str(CID.from_data(0x55, data))


def _announce_args(name: str) -> list[str]:
    return ["pubsub-announce", "--cid", _cid(name.encode()), "--name", name, "--size", "7"]


@pytest.mark.slow
async def test_announcement_reaches_all_once_late_joiner_gets_nothing_old(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        # 9 watchers: a chain with a few shortcuts back to the first.
        watchers = [await c.watcher()]
        for i in range(1, 9):
            peers = [watchers[i - 1].addr] + ([watchers[0].addr] if i % 4 == 0 else [])
            watchers.append(await c.watcher(*peers))
        await trio.sleep(2.0)  # a couple of heartbeats: meshes graft
        # The 10th node publishes from the far end of the chain.
        pub = await c.start(*_announce_args("first.txt"), "--peer", watchers[-1].addr)
        await pub.wait_for(lambda lines: any("msg_id" in x for x in lines))
        msg_id = next(x["msg_id"] for x in pub.lines if "msg_id" in x)
        for w in watchers:
            await w.wait_for(lambda lines: any(x.get("msg_id") == msg_id for x in lines))
        await trio.sleep(2.0)  # room for duplicates to show up
        for w in watchers:
            got = w.announcements()
            assert [x["msg_id"] for x in got] == [msg_id], (w.name, got)
            assert got[0]["name"] == "first.txt" and got[0]["size"] == 7

        # A node joining after the message left every message cache learns nothing of it.
        await trio.sleep(4.0)
        late = await c.watcher(watchers[0].addr)
        await trio.sleep(3.0)
        assert late.announcements() == []
        # ... but gets the next announcement, as does everyone else, once.
        pub2 = await c.start(*_announce_args("second.txt"), "--peer", watchers[4].addr)
        await pub2.wait_for(lambda lines: any("msg_id" in x for x in lines))
        msg_id2 = next(x["msg_id"] for x in pub2.lines if "msg_id" in x)
        for w in [*watchers, late]:
            await w.wait_for(lambda lines: any(x.get("msg_id") == msg_id2 for x in lines))
        await trio.sleep(1.0)
        assert [x["name"] for x in late.announcements()] == ["second.txt"]
        for w in watchers:
            assert [x["name"] for x in w.announcements()] == ["first.txt", "second.txt"]


# --- hostile peer ---------------------------------------------------------------------------------


async def _drain(stream: NetStream, conn: Connection) -> None:
    while await stream.receive_some(65536):
        pass


def _doc(name: str) -> bytes:
    cid = CID.parse(_cid(name.encode()))
    return encode_announcement(Announcement(cid, name, 1, "blake3", 1_700_000_000))


def _frame(*msgs: Message, subscribe: bool = False) -> bytes:
    subs = (SubOpts(True, ANNOUNCE_TOPIC),) if subscribe else ()
    return length_prefixed(encode_rpc(RPC(subs, msgs)))


def _oversized_message(key: PrivateKey) -> Message:
    """A validly signed message over the 1 MiB message limit whose RPC still fits one frame."""
    n = PUBSUB_MAX_MESSAGE - 200
    while True:
        msg = sign_message(key, ANNOUNCE_TOPIC, b"x" * n, 99)
        size = message_wire_size(msg)
        if size > GossipConfig().max_message_size and size <= PUBSUB_MAX_MESSAGE - 8:
            return msg
        n += 8


@pytest.mark.slow
async def test_hostile_peer_invalid_and_oversized_messages_dropped(tmp_path: Path) -> None:
    key = PrivateKey.generate()
    async with cluster(tmp_path) as c, open_host(key) as host:
        first = await c.watcher()
        second = await c.watcher(first.addr)
        await trio.sleep(1.5)
        host.set_stream_handler(MESHSUB_V11, _drain)
        with trio.fail_after(WAIT):
            stream, _ = await host.new_stream(parse(first.addr), [MESHSUB_V11])
        good = sign_message(key, ANNOUNCE_TOPIC, _doc("good.txt"), 1)
        forged = dataclasses.replace(
            sign_message(key, ANNOUNCE_TOPIC, _doc("x.txt"), 2), data=_doc("forged.txt")
        )
        other = PrivateKey.generate()  # signature by a key that is not the claimed author
        stolen = dataclasses.replace(
            sign_message(other, ANNOUNCE_TOPIC, _doc("stolen.txt"), 3), from_peer=good.from_peer
        )
        unsigned = Message(
            ANNOUNCE_TOPIC, _doc("unsigned.txt"), good.from_peer, (4).to_bytes(8, "big")
        )
        bad_doc = sign_message(key, ANNOUNCE_TOPIC, b'{"v":1,"name":"../etc/passwd"}', 5)
        bad_name = sign_message(
            key,
            ANNOUNCE_TOPIC,
            _doc("ok.txt").replace(b'"ok.txt"', b'"../ok.txt"'),
            6,
        )
        await stream.send_all(_frame(forged, stolen, unsigned, bad_doc, bad_name, subscribe=True))
        await stream.send_all(_frame(_oversized_message(key)))
        await stream.send_all(_frame(good))
        for w in (first, second):
            await w.wait_for(lambda lines: any(x.get("name") == "good.txt" for x in lines))

        # A frame whose length prefix is over the limit closes that stream, not the connection.
        await stream.send_all(encode_varint(PUBSUB_MAX_MESSAGE + 1) + b"\x00" * 1000)
        with trio.fail_after(10):
            try:
                while await stream.receive_some(1024):
                    pass
            except StreamReset:  # reset by the watcher
                pass
        with trio.fail_after(WAIT):
            stream2, _ = await host.new_stream(parse(first.addr), [MESHSUB_V11])
        await stream2.send_all(_frame(sign_message(key, ANNOUNCE_TOPIC, _doc("after.txt"), 7)))
        for w in (first, second):
            await w.wait_for(lambda lines: any(x.get("name") == "after.txt" for x in lines))
        await trio.sleep(1.0)
        for w in (first, second):
            assert [x["name"] for x in w.announcements()] == ["good.txt", "after.txt"]
        await c.stop(first)
        await first.wait_for(lambda lines: any("stats" in x for x in lines), timeout=5)
        stats = first.stats()
        assert stats.get("invalid_signature", 0) >= 3, stats
        assert stats.get("rejected", 0) >= 2, stats
        assert stats.get("oversized", 0) >= 1, stats
        assert stats.get("bad_frame", 0) >= 1, stats


# --- slow peer: the router never waits for one peer ----------------------------------------------


async def _never_read(stream: NetStream, conn: Connection) -> None:
    await trio.sleep_forever()


async def _consume(channel: trio.MemoryReceiveChannel[Any], into: list[bytes]) -> None:
    async for d in channel:
        into.append(d.data)


async def test_slow_peer_frames_dropped_without_blocking_others() -> None:
    cfg = GossipConfig(heartbeat_interval=0.2)
    listen = [parse(LOOPBACK)]
    async with (
        open_host(PrivateKey.generate(), listen=listen) as pub_host,
        open_host(PrivateKey.generate()) as fast_host,
        open_host(PrivateKey.generate()) as slow_host,
        trio.open_nursery() as nursery,
    ):
        pub = PubsubService(pub_host, config=cfg)
        fast = PubsubService(fast_host, config=cfg)
        received: list[bytes] = []
        nursery.start_soon(_consume, fast.subscribe("t"), received)
        # The slow peer subscribes, then never reads our stream.
        slow_host.set_stream_handler(MESHSUB_V11, _never_read)
        target = parse(f"{pub_host.listen_addrs()[0]}/p2p/{pub_host.peer_id}")
        await fast_host.dial(target)
        slow_stream, _ = await slow_host.new_stream(target, [MESHSUB_V11])
        await slow_stream.send_all(length_prefixed(encode_rpc(RPC((SubOpts(True, "t"),)))))
        with trio.fail_after(10):
            while len(pub.topic_peers("t")) < 2:
                await trio.sleep(0.02)
        payload = b"z" * 4000
        count = 2000
        with trio.fail_after(20):
            for i in range(count):
                await pub.publish("t", i.to_bytes(4, "big") + payload)
                if i % 100 == 0:
                    await trio.sleep(0.01)  # let the fast peer's writer run
            while len(received) < count:
                await trio.sleep(0.05)
        assert sorted(int.from_bytes(d[:4], "big") for d in received) == list(range(count))
        assert pub.queue_dropped(slow_host.peer_id) > 0
        assert pub.queue_dropped(fast_host.peer_id) == 0
        nursery.cancel_scope.cancel()


# --- watch --fetch-into with the real `share` command ---------------------------------------------


@pytest.mark.slow
async def test_watch_fetch_into_fetches_shared_file(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    src = tmp_path / "shared file.bin"
    src.write_bytes(data)
    into = tmp_path / "downloads"
    async with cluster(tmp_path) as c:
        watcher = await c.start("watch", "--listen", LOOPBACK, "--fetch-into", str(into))
        await watcher.wait_for(lambda lines: any("addr" in x for x in lines))
        sharer = await c.start("share", str(src), "--listen", LOOPBACK, "--peer", watcher.addr)
        await sharer.wait_for(lambda lines: any("cid" in x for x in lines))
        cid = next(x["cid"] for x in sharer.lines if "cid" in x)
        await watcher.wait_for(
            lambda lines: any("fetched" in x or "fetch_error" in x for x in lines)
        )
        outcome = next(x for x in watcher.lines if "fetched" in x or "fetch_error" in x)
        assert outcome.get("fetched") == cid, outcome
        assert (into / src.name).read_bytes() == data
        [ann] = watcher.announcements()
        assert (ann["cid"], ann["name"], ann["size"]) == (cid, src.name, len(data))
