"""The DHT driver (KadService) on real hosts over 127.0.0.1: several nodes in one process, then
20 ``fileshare`` processes (``test_twenty_node_processes``, marked slow)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from fileshare.content.cid import CID, RAW, SHA2_256
from fileshare.errors import ProtocolError
from fileshare.identity.keys import PrivateKey
from fileshare.identity.peerid import PeerId
from fileshare.net import addrs
from fileshare.net.host import NetStream, open_host
from fileshare.net.tcp import DialError
from fileshare.net.yamux import StreamReset
from fileshare.protocols.identify import IdentifyService
from fileshare.protocols.kad import PROTOCOL_ID, Message, MessageType, Peer
from fileshare.protocols.kad.messages import decode_message, encode_message
from fileshare.protocols.kad.persist import pack_addrs, unpack_addrs
from fileshare.protocols.kad.service import KadMode, KadService
from fileshare.repo import Repo
from fileshare.wire.protobuf import Writer, length_prefixed
from fileshare.wire.varint import encode_varint

from ..procutil import ENV, FILESHARE, ROOT, Lines, stop_process

LOOPBACK = "/ip4/127.0.0.1/tcp/0"


@asynccontextmanager
async def dht_node(
    path: Path, mode: KadMode = "server", key: PrivateKey | None = None, **options: object
) -> AsyncIterator[KadService]:
    repo = Repo.open(path)
    try:
        async with open_host(key or PrivateKey.generate(), listen=[addrs.parse(LOOPBACK)]) as host:
            identify = IdentifyService(host)
            yield KadService(host, repo, identify=identify, mode=mode, **options)  # type: ignore[arg-type]
    finally:
        repo.close()


def full_addr(kad: KadService) -> str:
    return f"{kad.host.listen_addrs()[0]}/p2p/{kad.host.peer_id}"


def content_cid(i: int) -> CID:
    return CID.from_data(RAW, f"content {i}".encode(), SHA2_256)


async def collect(kad: KadService, cid: CID, **options: object) -> list[tuple[PeerId, list[str]]]:
    out: list[tuple[PeerId, list[str]]] = []
    async with aclosing(kad.find_providers(cid, **options)) as found:  # type: ignore[arg-type]
        async for peer, maddrs in found:
            out.append((peer, [str(a) for a in maddrs]))
    return out


async def test_provide_and_find_in_a_small_network(tmp_path: Path) -> None:
    async with (
        dht_node(tmp_path / "n0") as seed,
        dht_node(tmp_path / "n1") as n1,
        dht_node(tmp_path / "n2") as n2,
        dht_node(tmp_path / "n3") as provider,
        dht_node(tmp_path / "n4") as n4,
        dht_node(tmp_path / "n5") as finder,
    ):
        with trio.fail_after(20):
            for node in (n1, n2, provider, n4):
                assert await node.bootstrap([addrs.parse(full_addr(seed))]) >= 1
            for node in (n1, n2, provider, n4):
                await node.bootstrapped.wait()
            cid = content_cid(1)
            stored = await provider.provide(cid)
            assert stored >= 3  # the closest peers it knows took the record
            # the finder knows only one bootstrap peer (not the provider)
            assert await finder.bootstrap([addrs.parse(full_addr(n1))]) == 1
            found = await collect(finder, cid)
        assert [p for p, _ in found] == [provider.host.peer_id]  # deduplicated
        provider_addr = str(provider.host.listen_addrs()[0])
        assert provider_addr in found[0][1]
        # the provider finds itself first, from its own store
        mine = await collect(provider, cid, limit=1)
        assert mine[0][0] == provider.host.peer_id
        # nobody provides this one: the lookup ends (no hang) with nothing
        with trio.fail_after(15):
            assert await collect(finder, content_cid(2)) == []
        # the finder's table grew from the answers it got
        assert len(finder.table) >= 4
        assert finder.rpc.idle_streams() >= 1  # streams are kept for reuse


async def test_lone_sharer_is_found_by_a_client_that_dials_it(tmp_path: Path) -> None:
    """A sharer with an empty routing table still answers GET_PROVIDERS with its own record."""
    async with (
        dht_node(tmp_path / "sharer") as sharer,
        dht_node(tmp_path / "c", mode="client") as client,
    ):
        sharer.start_providing(content_cid(7))
        with trio.fail_after(20):
            assert await client.bootstrap([addrs.parse(full_addr(sharer))]) == 1
            found = await collect(client, content_cid(7))
        assert len(sharer.table) == 0  # a client never enters the table
        assert [p for p, _ in found] == [sharer.host.peer_id]
        assert found[0][1], "the record carries the sharer's addresses"


async def test_client_mode_is_not_advertised_or_added(tmp_path: Path) -> None:
    async with (
        dht_node(tmp_path / "s") as server,
        dht_node(tmp_path / "p") as provider,
        dht_node(tmp_path / "c", mode="client") as client,
    ):
        with trio.fail_after(20):
            await provider.bootstrap([addrs.parse(full_addr(server))])
            assert await provider.provide(content_cid(3)) == 1
            assert await client.bootstrap([addrs.parse(full_addr(server))]) == 1
            assert PROTOCOL_ID not in client.host.protocols()
            found = await collect(client, content_cid(3))
            assert [p for p, _ in found] == [provider.host.peer_id]
            await trio.sleep(0.2)
        assert client.host.peer_id.bytes not in server.table
        assert provider.host.peer_id.bytes in server.table


async def test_routing_table_is_persisted_and_reloaded(tmp_path: Path) -> None:
    key = PrivateKey.generate()
    async with dht_node(tmp_path / "s1") as s1, dht_node(tmp_path / "s2") as s2:
        async with dht_node(tmp_path / "me", key=key) as me:
            with trio.fail_after(20):
                await s2.bootstrap([addrs.parse(full_addr(s1))])
                await me.bootstrap([addrs.parse(full_addr(s1))])
                await me.bootstrapped.wait()
                while len(me.table) < 2:  # s2 learned through s1
                    await me.get_closest_peers(me.local_id)
        # closed: the table was saved; a restart has it at once, before any connection
        async with dht_node(tmp_path / "me", key=key) as again:
            assert {p for p, _ in again.peers()} == {s1.host.peer_id, s2.host.peer_id}
            assert not again.host.connections
            with trio.fail_after(20):
                await s2.provide(content_cid(4))
                found = await collect(again, content_cid(4))
            assert [p for p, _ in found] == [s2.host.peer_id]


# --- hostile input ------------------------------------------------------------------------------


async def _raw_stream(client_host: object, server: KadService) -> NetStream:
    from fileshare.net.host import Host

    assert isinstance(client_host, Host)
    stream, _ = await client_host.new_stream(addrs.parse(full_addr(server)), [PROTOCOL_ID])
    return stream


async def _read_all(stream: NetStream, limit: float = 5.0) -> tuple[bytes, str]:
    """Everything the server sends until EOF/reset: (bytes, 'eof' | 'reset' | 'timeout')."""
    data = b""
    with trio.move_on_after(limit):
        try:
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return data, "eof"
                data += chunk
        except (
            StreamReset,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            OSError,
            EOFError,
        ):
            return data, "reset"
    return data, "timeout"


def _frame(msg_bytes: bytes) -> bytes:
    return length_prefixed(msg_bytes)


def hostile_inputs(me: bytes, other: bytes) -> dict[str, bytes]:
    mh = content_cid(9).multihash
    return {
        "oversized length prefix": encode_varint(10 * 1024 * 1024) + b"x" * 100,
        "garbage protobuf": _frame(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"),
        "unknown message type": _frame(Writer().uint(1, 77).bytes(2, mh).finish()),
        "key over 80 bytes": _frame(Writer().uint(1, 4).bytes(2, b"k" * 81).finish()),
        "find_node without key": _frame(Writer().uint(1, 4).finish()),
        "add_provider for another peer": _frame(
            encode_message(Message(MessageType.ADD_PROVIDER, mh, provider_peers=(Peer(other, ()),)))
        ),
        "add_provider key not a multihash": _frame(
            encode_message(
                Message(MessageType.ADD_PROVIDER, b"not-a-multihash", provider_peers=(Peer(me),))
            )
        ),
        "peer id not a multihash": _frame(
            Writer()
            .uint(1, 3)
            .bytes(2, mh)
            .bytes(9, Writer().bytes(1, b"\x99\x99").finish())
            .finish()
        ),
        "truncated then EOF": _frame(encode_message(Message(MessageType.FIND_NODE, mh)))[:-3],
        "wrong wire type for key": _frame(Writer().uint(1, 4).uint(2, 5).finish()),
    }


async def test_malformed_requests_are_rejected_without_harm(tmp_path: Path) -> None:
    async with (
        dht_node(tmp_path / "victim") as victim,
        dht_node(tmp_path / "helper") as helper,
        open_host(PrivateKey.generate()) as attacker,
    ):
        IdentifyService(attacker)
        with trio.fail_after(30):
            await helper.bootstrap([addrs.parse(full_addr(victim))])
            me = attacker.peer_id.bytes
            other = helper.host.peer_id.bytes
            for name, payload in hostile_inputs(me, other).items():
                stream = await _raw_stream(attacker, victim)
                await stream.send_all(payload)
                if name == "truncated then EOF":
                    await stream.send_eof()
                data, how = await _read_all(stream)
                assert data == b"", f"{name}: the server answered"
                assert how in ("reset", "eof"), f"{name}: stream left open ({how})"
                await stream.reset()
            assert victim.rejected == len(hostile_inputs(me, other))
            assert len(victim.providers) == 0  # nothing stored for anyone else

            # the victim still serves: two pipelined requests on one stream, two answers
            stream = await _raw_stream(attacker, victim)
            req = _frame(encode_message(Message(MessageType.FIND_NODE, victim.local_id)))
            await stream.send_all(req + _frame(encode_message(Message(MessageType.PING))))
            await stream.send_eof()
            data, how = await _read_all(stream)
            assert how == "eof"
            from fileshare.wire.protobuf import LengthPrefixedDecoder

            answers = [decode_message(f) for f in LengthPrefixedDecoder(65536).feed(data)]
            assert [a.type for a in answers] == [MessageType.FIND_NODE, MessageType.PING]
            assert any(p.id == victim.local_id for p in answers[0].closer_peers)
            assert await helper.provide(content_cid(5)) == 1


async def test_fuzzed_requests_never_hurt_the_server(tmp_path: Path) -> None:
    rng = random.Random(1234)
    valid = [
        encode_message(Message(MessageType.FIND_NODE, content_cid(i).multihash)) for i in range(4)
    ] + [encode_message(Message(MessageType.GET_PROVIDERS, content_cid(7).multihash))]
    async with dht_node(tmp_path / "victim") as victim, open_host(PrivateKey.generate()) as fuzzer:
        with trio.fail_after(60):
            for i in range(60):
                kind = i % 3
                if kind == 0:
                    payload = rng.randbytes(rng.randrange(1, 200))
                elif kind == 1:
                    payload = _frame(rng.randbytes(rng.randrange(0, 300)))
                else:  # a valid message with a few bytes flipped
                    body = bytearray(rng.choice(valid))
                    for _ in range(rng.randrange(1, 4)):
                        body[rng.randrange(len(body))] = rng.randrange(256)
                    payload = _frame(bytes(body))
                stream = await _raw_stream(fuzzer, victim)
                await stream.send_all(payload)
                await stream.send_eof()
                data, how = await _read_all(stream, 3.0)
                assert how in ("reset", "eof")
                await stream.reset()
            # still alive and answering
            stream = await _raw_stream(fuzzer, victim)
            await stream.send_all(_frame(valid[0]))
            await stream.send_eof()
            data, how = await _read_all(stream)
            assert how == "eof" and decode_message(data[1:]).type == MessageType.FIND_NODE


async def test_many_streams_from_one_peer_are_capped(tmp_path: Path) -> None:
    count = 40
    async with dht_node(tmp_path / "victim") as victim, open_host(PrivateKey.generate()) as hog:
        with trio.fail_after(30):
            streams: list[NetStream] = []
            refused = 0
            for _ in range(count):
                try:
                    streams.append(await _raw_stream(hog, victim))
                except (StreamReset, ProtocolError, DialError):  # reset during negotiation
                    refused += 1
            await trio.sleep(0.3)
            for s in streams:  # refused ones are reset; the others idle on (timeout)
                _data, how = await _read_all(s, 0.05)
                refused += how != "timeout"
            assert refused == count - 32
            # the victim answers another peer meanwhile
            async with dht_node(tmp_path / "other") as other:
                assert await other.bootstrap([addrs.parse(full_addr(victim))]) == 1
            for s in streams:
                await s.reset()


# --- 20 `fileshare` processes -----------------------------------------------------------------


class Proc:
    """A long-running ``fileshare`` process; ``lines`` are its first stdout lines."""

    def __init__(self, repo: Path, *args: str, first_lines: int = 1) -> None:
        self.repo = repo
        self.stderr_path = repo.with_suffix(".stderr")
        repo.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [*FILESHARE, "--repo", str(repo), *args],
            stdout=subprocess.PIPE,
            stderr=self.stderr_path.open("wb"),
            cwd=ROOT,
            env=ENV,
        )
        self.out = Lines(self.proc, self.stderr)
        self.lines = [self.read_line() for _ in range(first_lines)]

    def read_line(self, timeout: float = 60) -> str:
        return self.out.read(timeout)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        stop_process(self.proc, must_stop=False)


def run_cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FILESHARE, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=ENV
    )


async def _hostile_client(target: str) -> list[str]:
    """Send each hostile input to ``target`` on its own DHT stream; how each stream ended."""
    outcomes: list[str] = []
    async with open_host(PrivateKey.generate()) as host:
        IdentifyService(host)
        for name, payload in hostile_inputs(host.peer_id.bytes, b"\x00\x01x").items():
            stream, _ = await host.new_stream(addrs.parse(target), [PROTOCOL_ID])
            await stream.send_all(payload)
            if name == "truncated then EOF":
                await stream.send_eof()
            data, how = await _read_all(stream)
            outcomes.append("answered" if data else how)
            await stream.reset()
    return outcomes


@pytest.mark.slow
def test_twenty_node_processes(tmp_path: Path) -> None:
    procs: list[Proc] = []
    try:
        seed0 = Proc(tmp_path / "seed0", "daemon", "--listen", LOOPBACK)
        seed1 = Proc(tmp_path / "seed1", "daemon", "--listen", LOOPBACK, "--peer", seed0.lines[0])
        procs += [seed0, seed1]
        seeds = [seed0.lines[0], seed1.lines[0]]
        # 17 more daemons, each knowing one or both seeds, started a few at a time
        pending: list[Proc] = []
        for i in range(17):
            boot = seeds if i % 3 == 0 else [seeds[i % 2]]
            args = [x for s in boot for x in ("--peer", s)]
            # no Proc(...) here: start them all, then read their first lines
            pending.append(Proc.__new__(Proc))
            p = pending[-1]
            p.repo = tmp_path / f"node{i}"
            p.stderr_path = p.repo.with_suffix(".stderr")
            p.proc = subprocess.Popen(
                [*FILESHARE, "--repo", str(p.repo), "daemon", "--listen", LOOPBACK, *args],
                stdout=subprocess.PIPE,
                stderr=p.stderr_path.open("wb"),
                cwd=ROOT,
                env=ENV,
            )
            p.out = Lines(p.proc, p.stderr)
            procs.append(p)
        for p in pending:
            p.lines = [p.read_line(120)]
        # the 20th process shares a file (long-running `share`, one seed as its only peer)
        data = tmp_path / "shared.bin"
        data.write_bytes(os.urandom(300_000))
        sharer = Proc(
            tmp_path / "sharer",
            "share",
            str(data),
            "--listen",
            LOOPBACK,
            "--peer",
            seeds[1],
            first_lines=2,
        )
        procs.append(sharer)
        cid, sharer_addr = sharer.lines
        sharer_id = sharer_addr.rsplit("/p2p/", 1)[1]
        assert len(procs) == 20

        # a finder that knows only one (non-seed) peer finds the sharer as a provider
        entry = pending[10].lines[0]
        deadline = time.monotonic() + 90
        while True:
            res = run_cli("--repo", str(tmp_path / "finder"), "providers", cid, "--peer", entry)
            if res.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(2)  # the provide runs in the background after `share` printed the CID
        assert res.returncode == 0, res.stderr
        first = res.stdout.splitlines()[0].split()
        assert first[0] == sharer_id
        assert any(a.startswith("/ip4/127.0.0.1/tcp/") for a in first[1:])
        as_json = run_cli(
            "--repo", str(tmp_path / "finder"), "--json", "providers", cid, "--peer", entry
        )
        rows = [json.loads(line) for line in as_json.stdout.splitlines()]
        assert [r["peer_id"] for r in rows] == [sharer_id]
        unknown = CID.from_data(RAW, b"nobody has this", SHA2_256)
        none = run_cli(
            "--repo", str(tmp_path / "finder"), "providers", str(unknown), "--peer", entry
        )
        assert none.returncode == 1 and "no providers" in none.stderr

        # `fileshare fetch` finds the sharer through the DHT: its only --peer does not have the file
        out = tmp_path / "fetched.bin"
        fetched = run_cli(
            "--repo", str(tmp_path / "fetcher"), "fetch", cid, "-o", str(out), "--peer", entry
        )
        assert fetched.returncode == 0, fetched.stderr
        assert out.read_bytes() == data.read_bytes()

        # a hostile raw client cannot harm a daemon; it still answers afterwards
        victim = pending[5]
        outcomes = trio.run(_hostile_client, victim.lines[0])
        assert set(outcomes) <= {"reset", "eof"}, outcomes
        assert victim.proc.poll() is None
        res = run_cli(
            "--repo", str(tmp_path / "finder2"), "providers", cid, "--peer", victim.lines[0]
        )
        assert res.returncode == 0 and res.stdout.split()[0] == sharer_id, res.stderr

        # daemons save their routing table at shutdown: `fileshare peers` lists it
        victim.stop()
        listed = run_cli("--repo", str(victim.repo), "peers")
        assert listed.returncode == 0 and len(listed.stdout.splitlines()) >= 5, listed.stderr
    finally:
        for p in procs:
            p.stop()


@given(st.lists(st.binary(max_size=600), max_size=40))
def test_packed_addrs_round_trip(raw: list[bytes]) -> None:
    assert unpack_addrs(pack_addrs(raw)) == raw


@given(st.binary(max_size=2000))
def test_unpacking_damaged_addrs_never_raises(data: bytes) -> None:
    assert isinstance(unpack_addrs(data), list)
