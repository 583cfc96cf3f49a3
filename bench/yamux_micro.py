"""yamux throughput micro-benchmark: two processes, plain TCP on 127.0.0.1 (``--noise``: over Noise).

Prints, side by side: raw trio TCP (baseline, same run), one yamux stream, and N parallel yamux
streams with per-stream fairness (min/median/max MB/s).

    .venv/bin/python bench/yamux_micro.py --size-mib 512 --streams 64 --per-stream-mib 16 [--noise]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import trio

from fileshare.identity.keys import PrivateKey
from fileshare.net.buffered import BufferedStream
from fileshare.net.noise import secure_inbound, secure_outbound
from fileshare.net.yamux import YamuxConnection, YamuxStream

CHUNK = 1 << 20
READ_SIZE = 256 * 1024  # same read size the yamux driver uses, so the baseline is fair
MB = 1e6


async def _drain(stream: trio.abc.ReceiveStream) -> int:
    n = 0
    while True:
        data = await stream.receive_some(READ_SIZE)
        if not data:
            return n
        n += len(data)


async def _transport(
    tcp: trio.SocketStream, noise: bool, outbound: bool
) -> trio.abc.HalfCloseableStream:
    if not noise:
        return tcp
    key = PrivateKey.generate()
    buffered = BufferedStream(tcp)
    if outbound:
        return await secure_outbound(buffered, key)
    return await secure_inbound(buffered, key)


# --- child: the receiver ---
async def _child(port: int, noise: bool) -> None:
    raw = await _transport(await trio.open_tcp_stream("127.0.0.1", port), noise, True)
    await _drain(raw)
    await raw.aclose()

    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    conn = YamuxConnection(await _transport(tcp, noise, True), is_initiator=True)

    async def handle(stream: YamuxStream) -> None:
        await _drain(stream)
        await stream.send_all(b"k")
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.run)
        while True:
            try:
                stream = await conn.accept_stream()
            except trio.EndOfChannel:
                break
            nursery.start_soon(handle, stream)


# --- parent: the sender ---
async def _send_stream(stream: YamuxStream, total: int, buf: bytes) -> float:
    t0 = time.perf_counter()
    left = total
    while left:
        n = min(left, len(buf))
        await stream.send_all(buf if n == len(buf) else buf[:n])
        left -= n
    await stream.send_eof()
    if await stream.receive_some() != b"k":
        raise RuntimeError("receiver did not confirm")
    await stream.aclose()
    return time.perf_counter() - t0


async def _parent(size: int, streams: int, per_stream: int, noise: bool) -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    argv = [sys.executable, __file__, "--child", str(port)] + (["--noise"] if noise else [])
    child = subprocess.Popen(argv)
    buf = b"\xa5" * CHUNK
    try:
        raw = await _transport(await listener.accept(), noise, False)
        t0 = time.perf_counter()
        for _ in range(size // CHUNK):
            await raw.send_all(buf)
        await raw.send_eof()
        await raw.receive_some()  # child closes after draining everything
        raw_s = time.perf_counter() - t0
        await raw.aclose()

        tcp = await listener.accept()
        conn = YamuxConnection(await _transport(tcp, noise, False), is_initiator=False)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.run)
            one_s = await _send_stream(await conn.open_stream(), size, buf)
            times: list[float] = []

            async def one(stream: YamuxStream) -> None:
                times.append(await _send_stream(stream, per_stream, buf))

            t0 = time.perf_counter()
            async with trio.open_nursery() as inner:
                for _ in range(streams):
                    inner.start_soon(one, await conn.open_stream())
            many_s = time.perf_counter() - t0
            await conn.aclose()
    finally:
        child.wait(timeout=30)

    rates = sorted(per_stream / t / MB for t in times)
    print(
        "transport: " + ("Noise over TCP" if noise else "plain TCP") + " on 127.0.0.1, 2 processes"
    )
    base = "Noise, no yamux " if noise else "raw TCP baseline"
    print(f"{base}      : {size / raw_s / MB:8.0f} MB/s  ({size >> 20} MiB)")
    print(f"yamux, 1 stream       : {size / one_s / MB:8.0f} MB/s  ({size >> 20} MiB)")
    print(
        f"yamux, {streams} streams     : {streams * per_stream / many_s / MB:8.0f} MB/s aggregate "
        f"({streams} x {per_stream >> 20} MiB)"
    )
    print(
        f"  per stream MB/s     : min {rates[0]:.1f}  median {statistics.median(rates):.1f}  "
        f"max {rates[-1]:.1f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--per-stream-mib", type=int, default=16)
    ap.add_argument("--noise", action="store_true", help="run yamux over Noise")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        trio.run(_child, args.child, args.noise)
    else:
        trio.run(_parent, args.size_mib << 20, args.streams, args.per_stream_mib << 20, args.noise)


if __name__ == "__main__":
    main()
