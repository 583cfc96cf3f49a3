"""The README demo: two fileshare nodes on this machine (127.0.0.1 only).

Node A shares a sample file (imports it, provides it in the DHT, serves it over bitswap); node B
pings A over TCP + Noise + yamux, asks the DHT who provides the CID, fetches the file by CID from A
(every block verified) and compares it byte for byte with the original.
Run through `python3 tools/dev.py demo`, which sets up .venv first.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data" / "random-5MiB.bin"


def fileshare(repo: Path, *args: str) -> str:
    cmd = [sys.executable, "-m", "fileshare", "--repo", str(repo), *args]
    print("$ fileshare", "--repo", repo.name, *args, flush=True)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120).stdout
    print(out.rstrip(), flush=True)
    return out


def start_share(repo: Path, path: Path) -> tuple[subprocess.Popen[str], str, str]:
    """``fileshare share`` in the background; returns the process, the root CID and an address."""
    cmd = [
        sys.executable,
        "-m",
        "fileshare",
        "--repo",
        str(repo),
        "share",
        str(path),
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
    ]
    print(
        f"$ fileshare --repo {repo.name} share {path.name} --listen /ip4/127.0.0.1/tcp/0 &",
        flush=True,
    )
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    cid = proc.stdout.readline().strip()
    addr = proc.stdout.readline().strip()
    print(cid, addr, sep="\n", flush=True)
    if not cid or not addr.startswith("/ip4/127.0.0.1/"):
        proc.kill()
        raise SystemExit("demo: `fileshare share` did not print its CID and address")
    return proc, cid, addr


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="fileshare-demo-") as tmp:
        a, b = Path(tmp) / "nodeA", Path(tmp) / "nodeB"
        sharer, cid, addr = start_share(a, SAMPLE)
        out = Path(tmp) / "fetched.bin"
        try:
            fileshare(b, "ping", addr, "--count", "3")
            fileshare(b, "providers", cid, "--peer", addr)
            fileshare(b, "fetch", cid, "--peer", addr, "-o", str(out))
        finally:
            sharer.send_signal(signal.SIGTERM)
            sharer.wait(timeout=15)
        same = sha256(out) == sha256(SAMPLE)
        print(f"\n{SAMPLE.name}: {os.path.getsize(out)} bytes, CID {cid}")
        print("node B's copy is byte-identical to the original" if same else "MISMATCH")
        return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
