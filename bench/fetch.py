"""Fetch benchmarks: real `fileshare share` / `fileshare fetch` processes on 127.0.0.1.

(a) one provider, one fetcher (two processes), --size bytes (default 1 GiB): our end-to-end MB/s
    (process start, fetch into the store and the output file) beside raw one-stream MB/s of
    py-libp2p and of our own stack (bench/stream.py's measurement, same run), and a Helia-to-Helia
    `unixfs.cat` of --helia-size (default: --size) between two JS processes.
    Fairness: one untimed warm-up fetch first (page cache and, on this VM, guest memory touched
    once), then --runs timed fetches (each into a fresh repository, the previous one deleted);
    the stream baselines run --runs times too, interleaved; medians are reported. With
    --compare DIR the same fetches also run with the fileshare package of another source tree
    (e.g. an export of the last commit), interleaved with ours, each with its own provider.
(b) --multi-size bytes from 4 providers each capped at --cap bytes/s vs from 1 such provider:
    speedup (goal >= 3.5x) and duplicate bytes (goal < 1 %).
(c) peak RSS of the fetcher for --rss-size bytes (default 4 GiB), output to /dev/null.

    .venv/bin/python bench/fetch.py [--size 1GiB] [--runs 3] [--skip a,b,c,helia,py] [--compare DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
JS_PEER = ROOT / "tests" / "interop" / "js" / "peer.mjs"
LOOPBACK = "/ip4/127.0.0.1/tcp/0"
ENV = {k: v for k, v in os.environ.items() if k != "FILESHARE_REPO"} | {"PYTHONUNBUFFERED": "1"}
MIB = 1 << 20


def parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    return int(t[:-1]) * units[t[-1]] if t and t[-1] in units else int(t)


def mb_s(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fileshare", *args]


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def median(values: list[float]) -> float:
    return statistics.median(values)


def make_file(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        for off in range(0, size, 8 * MIB):
            f.write(os.urandom(min(8 * MIB, size - off)))
    return path


class Share:
    """`fileshare share` as a child process (imports first: import time is not measured)."""

    def __init__(self, repo: Path, file: Path, *extra: str, tree: Path = ROOT) -> None:
        argv = cli("--repo", str(repo), "--json", "share", str(file), "--listen", LOOPBACK)
        self.proc = subprocess.Popen(
            [*argv, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
            cwd=tree,
        )  # fmt: skip
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        if not first:
            raise RuntimeError(f"share failed: {self.proc.communicate()[1][-2000:]}")
        self.cid = json.loads(first)["cid"]
        self.addr = json.loads(self.proc.stdout.readline())["addr"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def fetch(
    repo: Path, cid: str, out: str, peers: list[str], tree: Path = ROOT
) -> tuple[dict[str, Any], float, int]:
    """Run `fileshare fetch`; return (its result JSON, wall seconds, peak RSS bytes).

    The result also gets ``cpu``: the fetcher's user + system CPU seconds.
    """
    argv = cli("--repo", str(repo), "--json", "fetch", cid, "-o", out)
    argv += [x for p in peers for x in ("--peer", p)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, cwd=tree)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    assert proc.stdout is not None and proc.stderr is not None
    out_text, err_text = proc.stdout.read().decode(), proc.stderr.read().decode()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"fetch failed ({proc.returncode}): {err_text[-2000:]}")
    result = dict(json.loads(out_text.splitlines()[-1]))
    result["cpu"] = usage.ru_utime + usage.ru_stime
    return result, wall, usage.ru_maxrss * 1024


def stream_bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_stream", ROOT / "bench" / "stream.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class JsPeer:
    """tests/interop/js/peer.mjs with the helia service; one JSON command at a time."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            ["node", str(JS_PEER), "--services", "identify,helia"], cwd=JS_PEER.parent,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while line := self.proc.stdout.readline():
            if line.startswith("{"):
                return dict(json.loads(line))
        raise RuntimeError("JS peer exited")

    def command(self, cmd: str, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        msg = {"cmd": cmd, "timeout_ms": 3_600_000, **args}
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        reply = self._read()
        if not reply.get("ok"):
            raise RuntimeError(f"{cmd} failed: {reply.get('error')}")
        return reply

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def write_floor(work: Path, size: int) -> float:
    """Seconds to do only the fetcher's disk writes for ``size`` bytes: every 1 MiB block to its
    own new file (temp + rename, as the block store does) and to its offset in one output file.
    No network, hashing or protocol work: the floor under a fetch's end-to-end time here (on this
    VM, writing into never-touched guest memory is several times slower than into reused pages)."""
    block = os.urandom(MIB)
    store = work / "floor-store"
    store.mkdir()
    t0 = time.perf_counter()
    fd = os.open(work / "floor-out.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(size // MIB):
            shard = store / f"{i % 256:02x}"
            shard.mkdir(exist_ok=True)
            tmp = shard / f"{i}.tmp"
            bfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(bfd, block)
            os.close(bfd)
            os.replace(tmp, shard / str(i))
            os.pwrite(fd, block, i * MIB)
        os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - t0
    shutil.rmtree(store)
    (work / "floor-out.bin").unlink()
    return elapsed


def bench_one(work: Path, size: int, skip: set[str], runs: int, compare: Path | None) -> None:
    print(
        f"(a) one provider, one fetcher, {size / MIB:.0f} MiB, default layout (blake3, 1 MiB), "
        f"1 warm-up + {runs} timed runs, load {os.getloadavg()[0]:.1f}"
    )
    src = make_file(work / "a.bin", size)
    trees = [("fileshare", ROOT)] + ([("compare", compare)] if compare is not None else [])
    shares = {name: Share(work / f"a-prov-{name}", src, tree=tree) for name, tree in trees}
    src.unlink()  # the providers' stores hold the blocks
    figures: dict[str, dict[str, list[float]]] = {name: {} for name, _ in trees}
    try:
        for run in range(runs + 1):
            for name, tree in trees:
                share = shares[name]
                out = work / "a-out.bin"
                repo = work / f"a-fetch-{name}"
                cpu0 = proc_cpu(share.proc.pid)
                result, wall, rss = fetch(repo, share.cid, str(out), [share.addr], tree)
                provider_cpu = proc_cpu(share.proc.pid) - cpu0
                assert out.stat().st_size == size
                out.unlink()
                shutil.rmtree(repo, ignore_errors=True)
                label = "warm-up" if run == 0 else f"run {run}"
                print(
                    f"  [{label}] {name} fetch: {mb_s(size, wall):.0f} MB/s end to end "
                    f"({wall:.2f} s: process start, fetch into the store and the file); network "
                    f"part {mb_s(size, result['seconds']):.0f} MB/s ({result['seconds']:.2f} s); "
                    f"CPU fetcher {result['cpu']:.2f} s, provider {provider_cpu:.2f} s; "
                    f"peak RSS {rss / MIB:.0f} MiB; load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
                if run:
                    f = figures[name]
                    f.setdefault("e2e", []).append(mb_s(size, wall))
                    f.setdefault("net", []).append(mb_s(size, result["seconds"]))
                    f.setdefault("cpu", []).append(result["cpu"])
                    f.setdefault("pcpu", []).append(provider_cpu)
    finally:
        for share in shares.values():
            share.stop()
        for name, _ in trees:
            shutil.rmtree(work / f"a-prov-{name}", ignore_errors=True)
    raw: dict[str, list[float]] = {}
    floors = []
    for run in range(runs):
        floors.append(mb_s(size, write_floor(work, size)))
        print(f"  [run {run + 1}] disk writes alone (store files + output file): "
              f"{floors[-1]:.0f} MB/s", flush=True)  # fmt: skip
    if "py" not in skip:
        stream = stream_bench()
        for run in range(runs):
            for impl, name in (("py", "py-libp2p"), ("ours", "fileshare")):
                res = stream.run_pair(impl, size, 1, 256 * 1024, None)
                raw.setdefault(name, []).append(mb_s(size, res["elapsed"]))
                print(
                    f"  [run {run + 1}] {name} raw one-stream (noise+yamux, no bitswap): "
                    f"{raw[name][-1]:.0f} MB/s",
                    flush=True,
                )
    print(f"  medians of {runs}:")
    for name, _ in trees:
        f = figures[name]
        print(
            f"    {name} fetch: {median(f['e2e']):.0f} MB/s end to end, network part "
            f"{median(f['net']):.0f} MB/s; CPU fetcher {median(f['cpu']):.2f} s, provider "
            f"{median(f['pcpu']):.2f} s ({mb_s(size, median(f['cpu'])):.0f} MB per fetcher "
            "CPU second)",
            flush=True,
        )
    print(f"    disk writes alone (the floor under a fetch): {median(floors):.0f} MB/s")
    for name, values in raw.items():
        print(f"    {name} raw one-stream: {median(values):.0f} MB/s")
    if "py-libp2p" in raw:
        ratio = median(figures["fileshare"]["e2e"]) / median(raw["py-libp2p"])
        print(f"    fileshare fetch end to end / py-libp2p raw stream: {ratio:.2f}x")


def bench_helia(size: int) -> None:
    print(f"(a') Helia -> Helia unixfs.cat, {size / MIB:.0f} MiB (memory blockstores)")
    a, b = JsPeer(), JsPeer()
    try:
        added = a.command("helia_add", size=size)
        addr = next(x for x in a.command("helia_info")["addrs"] if "/127.0.0.1/" in x)
        got = b.command("helia_cat", cid=added["cid"], addr=addr)
        assert got["bytes"] == size
        print(
            f"  helia: {mb_s(size, got['seconds']):.0f} MB/s ({got['seconds']:.2f} s)", flush=True
        )
    finally:
        a.stop()
        b.stop()


def bench_multi(work: Path, size: int, cap: int) -> None:
    print(f"(b) {size / MIB:.0f} MiB from providers each capped at {cap / MIB:.0f} MiB/s")
    src = make_file(work / "b.bin", size)
    shares = [Share(work / f"b-prov{i}", src, "--max-rate", str(cap)) for i in range(4)]
    try:
        times = {}
        for n in (1, 4):
            repo = work / f"b-fetch{n}"
            result, _, _ = fetch(repo, shares[0].cid, "/dev/null", [s.addr for s in shares[:n]])
            dup = result["duplicate_bytes"] + result["endgame_duplicate_bytes"]
            print(
                f"    (duplicates outside / in the end game: {result['duplicate_bytes']} / "
                f"{result['endgame_duplicate_bytes']} bytes)"
            )
            times[n] = result["seconds"]
            per = sorted(result["peers"].values())
            print(
                f"  {n} provider(s): {result['seconds']:.2f} s, {mb_s(size, result['seconds']):.1f}"
                f" MB/s, duplicate bytes {dup} ({100 * dup / size:.3f} %), "
                f"per provider MiB {[round(p / MIB, 1) for p in per]}",
                flush=True,
            )
            shutil.rmtree(repo, ignore_errors=True)
        print(f"  speedup 4 vs 1: {times[1] / times[4]:.2f}x (goal >= 3.5x)", flush=True)
    finally:
        for s in shares:
            s.stop()
        for i in range(4):
            shutil.rmtree(work / f"b-prov{i}", ignore_errors=True)
        src.unlink()


def bench_rss(work: Path, size: int) -> None:
    print(f"(c) peak RSS of the fetcher, {size / MIB:.0f} MiB, output to /dev/null")
    src = make_file(work / "c.bin", size)
    share = Share(work / "c-prov", src)
    src.unlink()  # the provider's store holds the blocks
    try:
        _, wall, rss = fetch(work / "c-fetch", share.cid, "/dev/null", [share.addr])
        print(
            f"  fetcher peak RSS {rss / MIB:.0f} MiB (goal <= 150 MB); "
            f"{mb_s(size, wall):.0f} MB/s end to end ({wall:.1f} s)",
            flush=True,
        )
    finally:
        share.stop()
        shutil.rmtree(work / "c-fetch", ignore_errors=True)
        shutil.rmtree(work / "c-prov", ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", default="1GiB", help="(a) file size")
    ap.add_argument("--helia-size", default=None, help="(a') Helia-to-Helia size (default --size)")
    ap.add_argument("--multi-size", default="256MiB", help="(b) file size")
    ap.add_argument("--cap", default="16MiB", help="(b) bytes/s cap of each provider")
    ap.add_argument("--rss-size", default="4GiB", help="(c) file size")
    ap.add_argument("--skip", default="", help="comma-separated: a,helia,py,b,c")
    ap.add_argument("--workdir", default=None, help="where files and repos go (default: a tmpdir)")
    ap.add_argument("--runs", type=int, default=3, help="(a) timed runs after the warm-up")
    ap.add_argument("--compare", default=None, help="(a) also fetch with this tree's fileshare")
    args = ap.parse_args()
    # byte-compiled like a regular install (an editable one is not; see tools/dev.py)
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "fileshare", "cli"], cwd=ROOT, check=True
    )
    if args.compare:
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", "fileshare", "cli"],
            cwd=args.compare,
            check=True,
        )
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    print(f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f} python={sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="fetch-bench-") as tmp:
        work = Path(tmp)
        if "a" not in skip:
            compare = Path(args.compare).resolve() if args.compare else None
            bench_one(work, parse_size(args.size), skip, max(1, args.runs), compare)
        if "helia" not in skip:
            bench_helia(parse_size(args.helia_size or args.size))
        if "b" not in skip:
            bench_multi(work, parse_size(args.multi_size), parse_size(args.cap))
        if "c" not in skip:
            bench_rss(work, parse_size(args.rss_size))


if __name__ == "__main__":
    main()
