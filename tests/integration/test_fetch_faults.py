"""Fetching with faulty and hostile providers: corrupt blocks, a provider killed mid-transfer, a
fetcher killed with SIGKILL and restarted, a peer that never answers, oversized blocks.

Honest providers are `fileshare share` processes; hostile ones are built here from our own host
and hand-made bitswap messages. The fetcher is always the real `fileshare fetch` process.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from fileshare.identity.keys import PrivateKey
from fileshare.net.addrs import parse
from fileshare.net.host import Connection, Host, NetStream, open_host
from fileshare.protocols.bitswap import (
    PROTOCOLS,
    BlockPresence,
    Message,
    Payload,
    Prefix,
    PresenceType,
    WantEntry,
    WantType,
    decode_message,
    encode_message,
)
from fileshare.wire.protobuf import LengthPrefixedDecoder, Writer, length_prefixed
from fileshare.wire.varint import encode_varint

from .test_share_fetch import (
    KIB,
    MIB,
    check_ok,
    finish_fetch,
    run_fetch,
    start_fetch,
    start_share,
    stored_blocks,
    write_random,
)

CHUNK = ("--chunk-size", "256KiB")


@dataclass
class Hostile:
    """A bitswap 'provider' that misbehaves as ``mode`` says; counts what it sent."""

    host: Host
    mode: str  # corrupt | silent | oversize | huge-frame
    wants_seen: int = 0
    bad_sent: int = 0

    @property
    def addr(self) -> str:
        return f"{self.host.listen_addrs()[0]}/p2p/{self.host.peer_id}"

    @property
    def peer_id(self) -> str:
        return str(self.host.peer_id)

    async def handle(self, stream: NetStream, conn: Connection) -> None:
        decoder = LengthPrefixedDecoder(8 * MIB)
        while data := await stream.receive_some(65536):
            for frame in decoder.feed(data):
                msg = decode_message(frame)
                if msg.wantlist is None:
                    continue
                entries = [e for e in msg.wantlist.entries if not e.cancel]
                self.wants_seen += len(entries)
                if self.mode == "silent" or not entries:
                    continue
                await self.answer(conn, entries)

    async def answer(self, conn: Connection, entries: list[WantEntry]) -> None:
        frames: list[bytes] = []
        for e in entries:
            if e.want_type == WantType.HAVE:
                presence = BlockPresence(e.cid, PresenceType.HAVE)
                frames.append(length_prefixed(encode_message(Message(presences=(presence,)))))
                continue
            self.bad_sent += 1
            prefix = Prefix.of(e.cid)
            if self.mode == "corrupt":
                junk = b"not the block you wanted " + e.cid.encode() * 100
                frames.append(length_prefixed(encode_message(Message(payload=(Payload(prefix, junk),)))))  # fmt: skip
            elif self.mode == "oversize":  # one block just over MAX_BLOCK_SIZE, hand-encoded
                block = Writer().bytes(1, prefix.encode()).bytes(2, b"x" * (2 * MIB + 1)).finish()
                frames.append(length_prefixed(Writer().bytes(3, block).finish()))
            else:  # huge-frame: a length prefix past BITSWAP_MAX_MESSAGE
                frames.append(encode_varint(5 * MIB) + b"\x00" * 1024)
        # a new stream per answer: our previous one may have been reset by the fetcher
        with contextlib.suppress(Exception):
            stream, _ = await conn.open_stream(list(PROTOCOLS))
            for frame in frames:
                await stream.send_all(frame)
            await stream.aclose()


@contextlib.asynccontextmanager
async def hostile(mode: str) -> AsyncIterator[Hostile]:
    async with open_host(PrivateKey.generate(), listen=[parse("/ip4/127.0.0.1/tcp/0")]) as host:
        h = Hostile(host, mode)
        for proto in PROTOCOLS:
            host.set_stream_handler(proto, h.handle)
        yield h


async def test_corrupt_provider_beside_honest(tmp_path: Path) -> None:
    src = write_random(tmp_path / "src.bin", 8 * MIB)
    honest = await start_share(tmp_path / "a", src, *CHUNK)
    try:
        async with hostile("corrupt") as bad:
            out = tmp_path / "out.bin"
            # the hostile peer first, so it is asked for blocks before the honest one is measured
            run = await run_fetch(tmp_path / "b", honest.cid, out, [bad.addr, honest.addr])
            result = check_ok(run, src, out)
            assert bad.bad_sent >= 3, "the hostile peer was asked for too few blocks"
            assert result["bad_blocks"] >= 3  # BITSWAP_MAX_BAD_BLOCKS: then it is dropped
            assert result["dropped"][bad.peer_id] == "sent 3 bad blocks"
            assert result["peers"].get(bad.peer_id, 0) == 0  # nothing it sent was accepted
        # no corrupt block was written: every stored block hashes to its name
        proc = await trio.run_process(
            [*_cli(tmp_path / "b"), "verify"], capture_stdout=True, capture_stderr=True
        )
        assert proc.stdout.decode().strip().endswith("blocks ok"), proc.stderr
    finally:
        await honest.stop(signal.SIGKILL)


@pytest.mark.parametrize("mode", ["oversize", "huge-frame"])
async def test_oversized_block(tmp_path: Path, mode: str) -> None:
    src = write_random(tmp_path / "src.bin", 4 * MIB)
    honest = await start_share(tmp_path / "a", src, *CHUNK)
    try:
        async with hostile(mode) as bad:
            out = tmp_path / "out.bin"
            run = await run_fetch(tmp_path / "b", honest.cid, out, [bad.addr, honest.addr])
            result = check_ok(run, src, out)
            assert bad.bad_sent >= 1 and result["bad_blocks"] >= 1
            # alone, the oversized provider is dropped and the fetch fails with a clear line
            run = await run_fetch(
                tmp_path / "c", honest.cid, tmp_path / "x", [bad.addr], "--stall-timeout", "3"
            )
            assert run.returncode == 1, run.stderr
            assert "every provider was dropped" in run.stderr and "bad blocks" in run.stderr
            assert not (tmp_path / "x").exists()
    finally:
        await honest.stop(signal.SIGKILL)


async def test_silent_peer(tmp_path: Path) -> None:
    src = write_random(tmp_path / "src.bin", 4 * MIB)
    honest = await start_share(tmp_path / "a", src, *CHUNK)
    try:
        async with hostile("silent") as silent:
            out = tmp_path / "out.bin"
            run = await run_fetch(tmp_path / "b", honest.cid, out, [silent.addr, honest.addr])
            check_ok(run, src, out)
            assert silent.wants_seen >= 1
            run = await run_fetch(
                tmp_path / "c", honest.cid, tmp_path / "x", [silent.addr], "--stall-timeout", "2"
            )
            assert run.returncode == 1 and "made no progress for 2 s" in run.stderr, run.stderr
            assert not (tmp_path / "x").exists()
    finally:
        await honest.stop(signal.SIGKILL)


async def test_provider_killed_mid_transfer(tmp_path: Path) -> None:
    src = write_random(tmp_path / "src.bin", 16 * MIB)
    a = await start_share(tmp_path / "a", src, *CHUNK, "--max-rate", "3MiB")
    b = await start_share(tmp_path / "b", src, *CHUNK, "--max-rate", "3MiB")
    try:
        out = tmp_path / "out.bin"
        fetcher = await start_fetch(tmp_path / "c", a.cid, out, [a.addr, b.addr])
        async for doc in fetcher.lines():
            if doc.get("bytes_fetched", 0) >= 3 * MIB:
                break
        assert (await b.stop(signal.SIGKILL)) == -signal.SIGKILL
        run = await finish_fetch(fetcher)
        result = check_ok(run, src, out)
        assert result["peers"][a.addr.rsplit("/", 1)[1]] > 0
    finally:
        await a.stop(signal.SIGKILL)
        await b.stop(signal.SIGKILL)


async def test_fetcher_killed_and_restarted(tmp_path: Path) -> None:
    size = 12 * MIB
    src = write_random(tmp_path / "src.bin", size)
    share = await start_share(tmp_path / "a", src, *CHUNK, "--max-rate", "3MiB")
    try:
        repo, out = tmp_path / "b", tmp_path / "out.bin"
        fetcher = await start_fetch(repo, share.cid, out, [share.addr])
        async for doc in fetcher.lines():
            if doc.get("bytes_fetched", 0) >= 3 * MIB:
                break
        fetcher.process.send_signal(signal.SIGKILL)
        await fetcher.process.wait()
        have = stored_blocks(repo)
        total = size // (256 * KIB) + 1  # leaves and the root
        assert 3 < have < total
        assert not out.exists()
        run = await run_fetch(repo, share.cid, out, [share.addr])
        result = check_ok(run, src, out)
        # only what was missing came over the network
        assert result["blocks_local"] == have
        assert result["blocks_fetched"] == total - have
        assert result["bytes_fetched"] <= size - (have - 1) * 256 * KIB + 4 * KIB
        assert run.progress[0]["blocks_local"] >= 1
    finally:
        await share.stop(signal.SIGKILL)


def _cli(repo: Path) -> list[str]:
    import sys

    return [sys.executable, "-m", "fileshare", "--repo", str(repo)]
