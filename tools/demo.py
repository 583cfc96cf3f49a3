"""The README demo: two fileshare nodes on this machine (127.0.0.1 only).

Node A imports a sample file and runs as a daemon; node B connects to it over TCP + Noise + yamux
(ping), then the file is fetched by CID and compared byte for byte with the original.
Run through `python3 tools/dev.py demo`, which sets up .venv first.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data" / "random-5MiB.bin"


def fileshare(repo: Path, *args: str) -> str:
    cmd = [sys.executable, "-m", "fileshare", "--repo", str(repo), *args]
    print("$ fileshare", "--repo", repo.name, *args, flush=True)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120).stdout
    print(out.rstrip(), flush=True)
    return out


def start_daemon(repo: Path) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "fileshare", "--repo", str(repo), "daemon",
           "--listen", "/ip4/127.0.0.1/tcp/0"]
    print("$ fileshare --repo", repo.name, "daemon --listen /ip4/127.0.0.1/tcp/0 &", flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        print(line.rstrip(), flush=True)
        if line.startswith("/ip4/127.0.0.1/"):
            return proc, line.strip()
    proc.kill()
    raise SystemExit("demo: the daemon did not print its address")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="fileshare-demo-") as tmp:
        a, b = Path(tmp) / "nodeA", Path(tmp) / "nodeB"
        added = json.loads(fileshare(a, "--json", "add", str(SAMPLE)))
        cid = added["cid"]
        daemon, addr = start_daemon(a)
        try:
            fileshare(b, "ping", addr, "--count", "3")
            out = Path(tmp) / "fetched.bin"
            fileshare(a, "fetch", cid, "-o", str(out))
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=15)
        same = sha256(out) == sha256(SAMPLE)
        print(f"\n{SAMPLE.name}: {os.path.getsize(out)} bytes, CID {cid}")
        print("fetched file is byte-identical to the original" if same else "MISMATCH")
        return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
