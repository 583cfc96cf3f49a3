"""Sync benchmarks: real `fileshare sync` processes on 127.0.0.1 (A creates, B and C join).

(a) latency: a file made complete in A's folder (written elsewhere, renamed in) until identical
    bytes are in B's and C's folders; 1 KB and 100 MiB (and 1 GiB with --gib), medians of --runs.
(b) rename of a 100 MiB file: until the new name is at B and C, and the block bytes B and C
    fetched for it (snapshot bytes + file bytes, from their --json events; framing not counted).
(c) initial sync of 10,000 files of 1 KB in 100 directories to a fresh peer (a new node joining
    by invite): from its process start until it has every file; medians of --runs fresh peers.

    .venv/bin/python bench/sync.py [--runs 5] [--skip a,b,c] [--gib] [--files 10000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "/ip4/127.0.0.1/tcp/0"
ENV = {k: v for k, v in os.environ.items() if k != "FILESHARE_REPO"} | {"PYTHONUNBUFFERED": "1"}
MIB = 1 << 20
ANCHORS = {  # Syncthing 1.19.2, fsWatcherDelayS=1, measured on these machines (issue 7)
    "1 KB": "1.01 s",
    "100 MiB": "1.43 s",
    "1 GiB": "5.47 s (196 MB/s)",
    "rename": "1.15 s, 36 KB on the wire",
    "10k": "8.2 s",
}
GOALS = {"1 KB": "< 0.5 s", "1 GiB": ">= 400 MB/s", "rename": "< 0.5 s, < 100 KB", "10k": "< 4 s"}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fileshare", *args]


class Sync:
    """A `fileshare --json sync` process; events collected by a thread."""

    def __init__(
        self, repo: Path, folder: Path, *args: str, wait_ready: bool = True, spy: str = ""
    ) -> None:
        self.events: list[dict[str, Any]] = []
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            cli("--repo", str(repo), "--json", "sync", str(folder), "--listen", LOOPBACK,
                "--no-mdns", *args),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=ENV,
        )  # fmt: skip
        self.spy: subprocess.Popen[bytes] | None = None
        if spy:  # py-spy attached to the process; writes its profile when the process exits
            self.spy = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "-f", "raw", "-r", "100",
                 "--threads", "-o", spy, "--pid", str(self.proc.pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()
        if wait_ready:
            self.wait(lambda e: e["event"] == "ready", 600)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.events.append(json.loads(line))

    def wait(self, pred: Any, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in list(self.events):
                if pred(e):
                    return e
            time.sleep(0.01)
        raise SystemExit(f"timed out waiting for an event; last: {self.events[-3:]}")

    @property
    def invite(self) -> str:
        return str(self.wait(lambda e: e["event"] == "invite", 60)["invite"])

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.spy is not None:
            self.spy.wait(timeout=60)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds a process has used so far (Linux /proc; zeros elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def peer_id(repo: Path) -> str:
    out = subprocess.run(cli("--repo", str(repo), "--json", "id"), capture_output=True,
                         text=True, env=ENV, cwd=ROOT, check=True)  # fmt: skip
    return str(json.loads(out.stdout)["peer_id"])


def wait_file(paths: list[Path], size: int, timeout: float) -> float:
    """Poll until every path exists with ``size`` bytes; the time it happened."""
    deadline = time.monotonic() + timeout
    todo = list(paths)
    while todo and time.monotonic() < deadline:
        todo = [p for p in todo if not (p.exists() and p.stat().st_size == size)]
        if todo:
            time.sleep(0.002)
    if todo:
        raise SystemExit(f"timed out waiting for {todo}")
    return time.monotonic()


def put(src_dir: Path, dst: Path, data_or_size: bytes | int) -> float:
    """Write the file outside the folder, rename it in; returns when it was complete there."""
    tmp = src_dir / f"incoming-{os.getpid()}"
    with tmp.open("wb") as f:
        if isinstance(data_or_size, bytes):
            f.write(data_or_size)
        else:
            for off in range(0, data_or_size, 8 * MIB):
                f.write(os.urandom(min(8 * MIB, data_or_size - off)))
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, dst)
    return time.monotonic()


def fetched_since(node: Sync, mark: int) -> tuple[int, int]:
    got = [e for e in node.events[mark:] if e["event"] == "received"]
    return (sum(e["snapshot_bytes_fetched"] for e in got),
            sum(e["file_bytes_fetched"] for e in got))  # fmt: skip


def line(label: str, value: str, anchor: str, goal: str = "") -> None:
    goal_text = f"  goal {goal}" if goal else ""
    print(f"{label:<34} {value:<30} Syncthing {anchor}{goal_text}", flush=True)


def bench_latency(base: Path, runs: int, sizes: list[tuple[str, int]]) -> dict[str, list[float]]:
    a_repo, b_repo, c_repo = (base / f"repo_{n}" for n in "abc")
    ids = [peer_id(b_repo), peer_id(c_repo)]
    a = Sync(a_repo, base / "A", "--allow", ids[0], "--allow", ids[1])
    b = Sync(b_repo, base / "B", "--join", a.invite)
    c = Sync(c_repo, base / "C", "--join", a.invite)
    out: dict[str, list[float]] = {}
    try:
        time.sleep(2)  # let the mesh form
        for label, size in sizes:
            times: list[float] = []
            for i in range(runs):
                name = f"{label.replace(' ', '')}-{i}.bin"
                t0 = put(base, base / "A" / name, size if size > 4096 else os.urandom(size))
                t1 = wait_file([base / "B" / name, base / "C" / name], size, 300)
                times.append(t1 - t0)
                time.sleep(0.5)  # let the "received" event arrive (not timed)
                got = [e for e in b.events if e["event"] == "received" and name in e["written"]]
                phases = (
                    f" (B's receive: {got[-1]['seconds']} s, {got[-1].get('phases')})"
                    if got
                    else ""
                )
                print(f"  {label} run {i + 1}: {t1 - t0:.3f} s{phases}", flush=True)
            out[label] = times
        src = base / "A" / "100MiB-0.bin"
        if src.exists():
            renames: list[float] = []
            wire: list[int] = []
            for i in range(runs):
                old = base / "A" / ("100MiB-0.bin" if i == 0 else f"renamed-{i - 1}.bin")
                new = base / "A" / f"renamed-{i}.bin"
                mark_b, mark_c = len(b.events), len(c.events)
                t0 = time.monotonic()
                os.rename(old, new)
                t1 = wait_file([base / "B" / new.name, base / "C" / new.name], 100 * MIB, 120)
                time.sleep(0.3)  # let the "received" events arrive
                sb, fb = fetched_since(b, mark_b)
                sc, fc = fetched_since(c, mark_c)
                renames.append(t1 - t0)
                wire.append(max(sb + fb, sc + fc))
                print(f"  rename run {i + 1}: {t1 - t0:.3f} s, B fetched {sb}+{fb} B, "
                      f"C fetched {sc}+{fc} B (snapshot+file)", flush=True)  # fmt: skip
            out["rename"] = renames
            out["rename_bytes"] = [float(w) for w in wire]
    finally:
        for n in (a, b, c):
            n.stop()
    return out


def bench_initial(
    base: Path, runs: int, files: int = 10_000, dirs: int = 100, spy: str = ""
) -> list[float]:
    """Initial sync to fresh peers; also prints the source's own scan + import + publish time."""
    src = base / "S"
    per = files // dirs
    for d in range(dirs):
        (src / f"d{d:03}").mkdir(parents=True)
        for f in range(per):
            (src / f"d{d:03}" / f"f{f:03}.txt").write_bytes(
                os.urandom(1000) + b"%06d" % (d * per + f)
            )
    a = Sync(base / "repo_s", src, spy=f"{spy}.source" if spy else "")
    times: list[float] = []
    try:
        a.wait(lambda e: e["event"] == "published" and e["files"] >= files, 600)
        print(f"  source: scan + import + publish of {files} files {time.monotonic() - a.started:.3f} s "
              "from process start", flush=True)  # fmt: skip
        for i in range(runs):
            dst = base / f"fresh{i}"
            t0 = time.monotonic()
            source_cpu = cpu_seconds(a.proc.pid)
            fresh = Sync(base / f"repo_fresh{i}", dst, "--join", a.invite, wait_ready=False,
                         spy=f"{spy}.fresh{i}" if spy else "")  # fmt: skip
            last = dst / f"d{dirs - 1:03}" / f"f{per - 1:03}.txt"
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                if last.exists() and sum(1 for _ in dst.glob("d*/f*.txt")) >= files:
                    break
                time.sleep(0.02)
            t1 = time.monotonic()
            with contextlib.suppress(SystemExit):  # for the report only (not timed)
                fresh.wait(lambda e: e["event"] in ("received", "error"), 10)
            ready = next((e for e in fresh.events if e["event"] == "ready"), None)
            recv = [(e["seconds"], e.get("phases"), f"{e['file_blocks_fetched']} blocks")
                    for e in fresh.events if e["event"] == "received"]  # fmt: skip
            user, system = cpu_seconds(fresh.proc.pid)
            cpu = (f"; CPU s: fresh {user:.2f} user + {system:.2f} sys, "
                   f"source {sum(cpu_seconds(a.proc.pid)) - sum(source_cpu):.2f}")  # fmt: skip
            fresh.stop()
            ok = sum(1 for _ in dst.glob("d*/f*.txt")) == files
            same = all((dst / p).read_bytes() == (src / p).read_bytes()
                       for p in ("d000/f000.txt", f"d{dirs // 2:03}/f{per // 2:03}.txt",
                                 f"d{dirs - 1:03}/f{per - 1:03}.txt"))  # fmt: skip
            times.append(t1 - t0)
            print(f"  initial sync run {i + 1}: {t1 - t0:.3f} s from process start "
                  f"(ready {ready is not None}; receive took {recv} s{cpu}), complete={ok and same}", flush=True)  # fmt: skip
    finally:
        a.stop()
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--skip", default="")
    p.add_argument("--gib", action="store_true", help="also 1 GiB (long)")
    p.add_argument("--files", type=int, default=10_000, help="files in (c), 100 per directory")
    p.add_argument("--spy", default="", help="(c) under py-spy: raw profiles to SPY.source/.freshN")
    args = p.parse_args()
    # byte-compiled like a regular install (an editable one is not; see tools/dev.py)
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "fileshare", "cli"], cwd=ROOT, check=True
    )
    skip = set(args.skip.split(",")) - {""}
    base = Path(tempfile.mkdtemp(prefix="fs-bench-sync-"))
    try:
        results: dict[str, list[float]] = {}
        if "a" not in skip or "b" not in skip:
            sizes = [("1 KB", 1000), ("100 MiB", 100 * MIB)]
            if args.gib:
                sizes.append(("1 GiB", 1 << 30))
            results = bench_latency(base / "lat", args.runs, sizes)
        if "c" not in skip:
            dirs = max(1, args.files // 100)
            results["10k"] = bench_initial(base / "init", args.runs, args.files, dirs, args.spy)
        print(f"\nmedians of {args.runs} (loopback, 2 shared cores):")
        for key in ("1 KB", "100 MiB", "1 GiB"):
            if key in results:
                med = statistics.median(results[key])
                size = {"1 KB": 1000, "100 MiB": 100 * MIB, "1 GiB": 1 << 30}[key]
                rate = f" ({size / med / 1e6:.0f} MB/s)" if size > MIB else ""
                line(f"file complete at A -> B and C {key}", f"{med:.3f} s{rate}",
                     ANCHORS[key], GOALS.get(key, ""))  # fmt: skip
        if "rename" in results:
            line("rename of 100 MiB", f"{statistics.median(results['rename']):.3f} s, "
                 f"{statistics.median(results['rename_bytes']) / 1000:.1f} KB fetched",
                 ANCHORS["rename"], GOALS["rename"])  # fmt: skip
        if "10k" in results:
            line(f"{args.files:,} x 1 KB to a fresh peer", f"{statistics.median(results['10k']):.3f} s",
                 ANCHORS["10k"], GOALS["10k"])  # fmt: skip
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
