"""Stream throughput: our Noise + yamux vs py-libp2p's, two OS processes on 127.0.0.1.

    .venv/bin/python bench/stream.py                      # 1 GiB one stream, 64 x 16 MiB parallel
    .venv/bin/python bench/stream.py --size 256MiB --no-py --parallel 0

A sink server process reads every stream to its end and answers with the byte count (8 bytes,
big-endian); a client process writes the payload, half-closes and waits for that answer. The
time is the client's, from the first byte written to the answer received.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SINK = "/fileshare/bench/sink/1.0.0"
UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "m": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gib": 1 << 30,
}


def parse_size(text: str) -> int:
    t = text.strip().lower()
    num = t.rstrip("abcdefghijklmnopqrstuvwxyz")
    return int(float(num) * UNITS[t[len(num) :]])


def mb_s(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


# The sink answers each stream with its byte count and the server CPU seconds spent since the
# first stream began (so a client can tell CPU cost from time spent waiting on a busy machine).
ACK_SIZE = 16
_first_cpu: list[float] = []


def _cpu_start() -> float:
    if not _first_cpu:
        _first_cpu.append(time.process_time())
    return _first_cpu[0]


def _ack(total: int, cpu0: float) -> bytes:
    return total.to_bytes(8, "big") + int((time.process_time() - cpu0) * 1e6).to_bytes(8, "big")


def _check_ack(ack: bytes, size: int, server_cpu: list[float]) -> None:
    if int.from_bytes(ack[:8], "big") != size:
        raise RuntimeError("sink counted a different size")
    server_cpu.append(int.from_bytes(ack[8:16], "big") / 1e6)


def _result(
    elapsed: float, per_stream: list[float], cpu: float, server_cpu: list[float]
) -> dict[str, Any]:
    return {
        "elapsed": elapsed,
        "per_stream": per_stream,
        "client_cpu": cpu,
        "server_cpu": max(server_cpu),
    }


def describe(nbytes: int, res: dict[str, Any]) -> str:
    cpu = max(res["client_cpu"], res["server_cpu"])
    return (
        f"{mb_s(nbytes, res['elapsed']):8.1f} MB/s  ({res['elapsed']:.2f} s; CPU client "
        f"{res['client_cpu']:.2f} s, server {res['server_cpu']:.2f} s -> "
        f"{mb_s(nbytes, cpu):.0f} MB/s per busiest-side CPU second)"
    )


# --- our implementation --------------------------------------------------------------------------


async def _ours_server() -> None:
    import trio

    from fileshare.identity.keys import PrivateKey
    from fileshare.net import addrs
    from fileshare.net.host import Connection, NetStream, open_host

    async def sink(stream: NetStream, conn: Connection) -> None:
        cpu0 = _cpu_start()
        total = 0
        while True:
            chunk = await stream.receive_some(1 << 20)
            if not chunk:
                break
            total += len(chunk)
        await stream.send_all(_ack(total, cpu0))

    async with open_host(
        PrivateKey.generate(), listen=[addrs.parse("/ip4/127.0.0.1/tcp/0")]
    ) as host:
        host.set_stream_handler(SINK, sink)
        print(addrs.with_peer(host.listen_addrs()[0], host.peer_id), flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)  # until the parent closes our stdin


async def _ours_client(target: str, size: int, streams: int, write: int) -> dict[str, Any]:
    import trio

    from fileshare.identity.keys import PrivateKey
    from fileshare.net import addrs
    from fileshare.net.host import Host, open_host

    payload = memoryview(os.urandom(write))

    async def one(host: Host, peer: Any, results: list[float], t0: float) -> None:
        stream, _ = await host.new_stream(peer, [SINK])
        left = size
        while left:
            n = min(left, write)
            await stream.send_all(payload[:n])
            left -= n
        await stream.send_eof()
        _check_ack(await stream.receive_exactly(ACK_SIZE), size, server_cpu)
        results.append(time.perf_counter() - t0)
        await stream.aclose()

    server_cpu: list[float] = []
    async with open_host(PrivateKey.generate()) as host:
        conn = await host.dial(addrs.parse(target))
        results: list[float] = []
        t0, cpu0 = time.perf_counter(), time.process_time()
        async with trio.open_nursery() as nursery:
            for _ in range(streams):
                nursery.start_soon(one, host, conn.remote_peer, results, t0)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return _result(elapsed, results, cpu, server_cpu)


# --- py-libp2p ------------------------------------------------------------------------------------


def _py_host() -> Any:
    from libp2p import create_yamux_muxer_option, new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.crypto.x25519 import X25519PrivateKey
    from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
    from libp2p.security.noise.transport import Transport as NoiseTransport

    kp = create_new_key_pair()
    noise = NoiseTransport(kp, noise_privkey=X25519PrivateKey.new())
    return new_host(key_pair=kp, sec_opt={NOISE_ID: noise}, muxer_opt=create_yamux_muxer_option())


async def _py_server() -> None:
    import multiaddr
    import trio
    from libp2p.custom_types import TProtocol
    from libp2p.network.stream.exceptions import StreamEOF

    host = _py_host()

    async def sink(stream: Any) -> None:
        cpu0 = _cpu_start()
        total = 0
        while True:
            try:
                chunk = await stream.read(1 << 20)
            except StreamEOF:
                break
            if not chunk:
                break
            total += len(chunk)
        await stream.write(_ack(total, cpu0))
        await stream.close()

    async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        host.set_stream_handler(TProtocol(SINK), sink)
        addr = host.get_addrs()[0]
        print(addr, flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)


async def _py_client(target: str, size: int, streams: int, write: int) -> dict[str, Any]:
    import multiaddr
    import trio
    from libp2p.custom_types import TProtocol
    from libp2p.peer.peerinfo import info_from_p2p_addr

    host = _py_host()
    payload = os.urandom(write)
    info = info_from_p2p_addr(multiaddr.Multiaddr(target))
    results: list[float] = []
    server_cpu: list[float] = []

    async def one(t0: float) -> None:
        stream = await host.new_stream(info.peer_id, [TProtocol(SINK)])
        left = size
        while left:
            n = min(left, write)
            await stream.write(payload if n == write else payload[:n])
            left -= n
        await stream.close_write()
        got = b""
        while len(got) < ACK_SIZE:
            got += await stream.read(ACK_SIZE - len(got))
        _check_ack(got, size, server_cpu)
        results.append(time.perf_counter() - t0)

    async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        await host.connect(info)
        t0, cpu0 = time.perf_counter(), time.process_time()
        async with trio.open_nursery() as nursery:
            for _ in range(streams):
                nursery.start_soon(one, t0)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return _result(elapsed, results, cpu, server_cpu)


# --- orchestration --------------------------------------------------------------------------------


def run_pair(impl: str, size: int, streams: int, write: int, profile: str | None) -> dict[str, Any]:
    """Start a server process and a client process; return the client's JSON result."""
    me = [sys.executable, str(Path(__file__).resolve())]
    server = subprocess.Popen(
        [*me, "_server", impl], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        target = server.stdout.readline().strip()
        if not target:
            raise RuntimeError(f"{impl} server did not start")
        cmd = [*me, "_client", impl, target, str(size), str(streams), str(write)]
        if profile:
            cmd = [sys.executable, "-m", "pyinstrument", "-o", profile, *cmd[1:]]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"{impl} client failed:\n{out.stderr[-3000:]}")
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))
    finally:
        if server.stdin:
            server.stdin.close()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _child(argv: list[str]) -> None:
    import trio

    role, impl = argv[0], argv[1]
    if role == "_server":
        trio.run(_ours_server if impl == "ours" else _py_server)
        return
    target, size, streams, write = argv[2], int(argv[3]), int(argv[4]), int(argv[5])
    client = _ours_client if impl == "ours" else _py_client
    result = trio.run(client, target, size, streams, write)
    print(json.dumps(result), flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("_server", "_client"):
        _child(sys.argv[1:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", default="1GiB", help="single-stream payload (default 1GiB)")
    ap.add_argument("--write", default="256KiB", help="bytes per send_all / write call")
    ap.add_argument("--parallel", type=int, default=64, help="parallel streams (0 to skip)")
    ap.add_argument("--parallel-size", default="16MiB", help="payload per parallel stream")
    ap.add_argument("--no-py", action="store_true", help="skip the py-libp2p baseline")
    ap.add_argument("--profile", metavar="HTML", help="pyinstrument profile of our client")
    args = ap.parse_args()
    size, write = parse_size(args.size), parse_size(args.write)

    print(f"single stream, {size / (1 << 20):.0f} MiB, writes of {write // 1024} KiB")
    ours = run_pair("ours", size, 1, write, args.profile)
    ours_mb = mb_s(size, ours["elapsed"])
    print(f"  fileshare  noise+yamux: {describe(size, ours)}", flush=True)
    if not args.no_py:
        py = run_pair("py", size, 1, write, None)
        py_mb = mb_s(size, py["elapsed"])
        print(f"  py-libp2p  noise+yamux: {describe(size, py)}")
        ours_cpu = max(ours["client_cpu"], ours["server_cpu"])
        py_cpu = max(py["client_cpu"], py["server_cpu"])
        print(
            f"  ratio: {ours_mb / py_mb:.2f}x wall clock, {py_cpu / ours_cpu:.2f}x per CPU second",
            flush=True,
        )

    if args.parallel:
        psize = parse_size(args.parallel_size)
        total = psize * args.parallel
        print(f"{args.parallel} parallel streams x {psize / (1 << 20):.0f} MiB")
        impls = ["ours"] if args.no_py else ["ours", "py"]
        for impl in impls:
            res = run_pair(impl, psize, args.parallel, write, None)
            per = [mb_s(psize, t) for t in res["per_stream"]]
            name = "fileshare " if impl == "ours" else "py-libp2p "
            print(
                f"  {name} aggregate {describe(total, res)}\n"
                f"             per stream min {min(per):.1f} / median {statistics.median(per):.1f}"
                f" / max {max(per):.1f} MB/s",
                flush=True,
            )


if __name__ == "__main__":
    main()
