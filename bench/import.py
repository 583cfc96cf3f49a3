"""Import benchmark: `fileshare` import speed next to raw blake3 over the same bytes, same run.

    .venv/bin/python bench/import.py                    # 256 MiB and 1 GiB, median of 3 runs
    .venv/bin/python bench/import.py --sizes 64 --runs 1   # quick check

For each size a deterministic file (blake3 XOF of a fixed seed) is written to a temporary
directory, so it is in the page cache. Then, each in a fresh child process (so peak RSS is its own):

- raw: blake3 of the file read in the same 1 MiB chunks (one thread; and with blake3's own
  multithreading, which is what CID hashing uses), and blake3 of the whole file (mmap, all cores);
- import: ``import_file`` into a new temporary repository (default layout: 1 MiB raw leaves,
  blake3), median of ``--runs`` after ``--warmup`` untimed runs, the throughput per CPU second
  (user + system time of all threads, which other jobs on a shared machine do not inflate), and
  the process's peak RSS.

MB/s means 10^6 bytes per second.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MIB = 1024 * 1024
SEED = b"fileshare import benchmark"


def generate(path: Path, size: int) -> None:
    import blake3

    xof = blake3.blake3(SEED)
    step = 32 * MIB
    with open(path, "wb") as f:
        for offset in range(0, size, step):
            f.write(xof.digest(length=min(step, size - offset), seek=offset))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child_raw(path: Path, runs: int) -> dict[str, Any]:
    import blake3

    size = path.stat().st_size
    buf = bytearray(MIB)

    def chunked(threads: int) -> float:
        start = time.perf_counter()
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                view = memoryview(buf)[:n]
                blake3.blake3(view, max_threads=threads).digest()
        return size / (time.perf_counter() - start) / 1e6

    def whole() -> float:
        start = time.perf_counter()
        blake3.blake3(max_threads=blake3.blake3.AUTO).update_mmap(path).digest()
        return size / (time.perf_counter() - start) / 1e6

    return {
        "chunked_1thread": statistics.median(chunked(1) for _ in range(runs)),
        "chunked_auto": statistics.median(chunked(blake3.blake3.AUTO) for _ in range(runs)),
        "whole_mmap_auto": statistics.median(whole() for _ in range(runs)),
    }


def child_import(path: Path, runs: int, warmup: int, workdir: Path) -> dict[str, Any]:
    import trio

    from fileshare.content.ingest import import_file
    from fileshare.content.layout import make_layout
    from fileshare.repo import Repo

    layout = make_layout()
    speeds: list[float] = []
    per_cpu: list[float] = []
    root = ""
    for i in range(runs + warmup):
        repo_path = workdir / f"repo-{i}"
        with Repo.open(repo_path) as repo:
            cpu = cpu_seconds()
            start = time.perf_counter()
            result = trio.run(import_file, repo, path, layout)
            elapsed = time.perf_counter() - start
            if i >= warmup:
                speeds.append(result.size / elapsed / 1e6)
                per_cpu.append(result.size / (cpu_seconds() - cpu) / 1e6)
            root = str(result.root)
        shutil.rmtree(repo_path)  # frees the page cache the next run writes into
    return {"speeds": speeds, "per_cpu": per_cpu, "root": root, "peak_rss_mib": peak_rss_mib()}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # all threads of this process
    return usage.ru_utime + usage.ru_stime


def run_child(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sizes", default="256,1024", help="file sizes in MiB (comma-separated)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed import runs first (page cache warm-up)"
    )
    parser.add_argument("--dir", type=Path, default=None, help="where to put the temporary files")
    parser.add_argument("--child", choices=["raw", "import"], help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child == "raw":
        print(json.dumps(child_raw(args.file, args.runs)))
        return
    if args.child == "import":
        print(json.dumps(child_import(args.file, args.runs, args.warmup, args.dir)))
        return

    sizes = [int(s) for s in args.sizes.split(",")]
    print(
        f"cpus={os.cpu_count()} python={sys.version.split()[0]} load={os.getloadavg()[0]:.1f} "
        f"runs={args.runs} (median, after {args.warmup} warm-up import)"
    )
    rss: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="fileshare-bench-", dir=args.dir) as tmp:
        work = Path(tmp)
        for mib in sizes:
            path = work / f"bench-{mib}MiB.bin"
            generate(path, mib * MIB)
            raw = run_child("--child", "raw", "--file", str(path), "--runs", str(args.runs))
            imp = run_child(
                "--child",
                "import",
                "--file",
                str(path),
                "--runs",
                str(args.runs),
                "--warmup",
                str(args.warmup),
                "--dir",
                tmp,
            )
            ours = statistics.median(imp["speeds"])
            rss[mib] = imp["peak_rss_mib"]
            runs = " ".join(f"{s:.0f}" for s in imp["speeds"])
            print(
                f"[{mib} MiB] import: {ours:.0f} MB/s (runs: {runs}; "
                f"{statistics.median(imp['per_cpu']):.0f} MB per CPU second) root {imp['root']}"
            )
            print(
                f"[{mib} MiB] raw blake3: 1 MiB chunks 1 thread {raw['chunked_1thread']:.0f} MB/s, "
                f"1 MiB chunks multithreaded {raw['chunked_auto']:.0f} MB/s, "
                f"whole file mmap multithreaded {raw['whole_mmap_auto']:.0f} MB/s"
            )
            print(
                f"[{mib} MiB] ratio: {ours / raw['chunked_1thread']:.0%} of chunked 1-thread, "
                f"{ours / raw['chunked_auto']:.0%} of chunked multithreaded, "
                f"{ours / raw['whole_mmap_auto']:.0%} of whole-file multithreaded blake3"
            )
            print(f"[{mib} MiB] import process peak RSS: {rss[mib]:.0f} MiB")
            path.unlink()
    if len(rss) > 1:
        small, big = min(rss), max(rss)
        print(
            f"peak RSS {small} MiB file: {rss[small]:.0f} MiB, {big} MiB file: {rss[big]:.0f} MiB "
            f"(growth {rss[big] - rss[small]:+.0f} MiB for {big - small} MiB more data)"
        )


if __name__ == "__main__":
    main()
