"""The real `fileshare` command in subprocesses: add/fetch round trips, errors, verify, gc, pins."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import blake3
import pytest

from fileshare.content.blockstore import Blockstore
from fileshare.content.cid import CID

from ..storeutil import corrupt_block

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_data"
MIB = 1024 * 1024


def fileshare_command() -> list[str]:
    script = Path(sys.executable).with_name("fileshare")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "fileshare"]


class Cli:
    def __init__(self, repo: Path, cwd: Path) -> None:
        self.repo = repo
        self.cwd = cwd
        self.command = fileshare_command()

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "FILESHARE_REPO"}
        env["PYTHONPATH"] = str(ROOT)
        return subprocess.run(
            [*self.command, "--repo", str(self.repo), *args],
            capture_output=True,
            text=True,
            cwd=self.cwd,
            env=env,
            timeout=timeout,
            check=False,
        )

    def ok(self, *args: str) -> str:
        proc = self.run(*args)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    def fails(self, *args: str, match: str) -> str:
        """Run a command that must fail with exit 1 and one line on stderr containing ``match``."""
        proc = self.run(*args)
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith("error: ") and match in lines[0], lines[0]
        return lines[0]


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    work = tmp_path / "work"
    work.mkdir()
    return Cli(tmp_path / "repo", work)


def round_trip(cli: Cli, src: Path, *add_args: str) -> str:
    cid = cli.ok("add", str(src), *add_args)
    out = cli.cwd / f"out-{src.name}"
    assert cli.ok("fetch", cid, "-o", str(out)) == str(out)
    assert out.read_bytes() == src.read_bytes()
    out.unlink()
    return cid


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("--hash", "sha2-256"),
        ("--profile", "unixfs-v0-2015"),
        ("--profile", "unixfs-v0-2015", "--hash", "sha2-256"),
        ("--chunk-size", "256KiB"),
    ],
)
def test_sample_files_round_trip(cli: Cli, args: tuple[str, ...]) -> None:
    for name in ("hello.txt", "random-5MiB.bin"):
        round_trip(cli, SAMPLES / name, *args)


def test_random_sizes_round_trip(cli: Cli) -> None:
    rng = random.Random(1234)
    sizes = [0, 1, MIB - 1, MIB, MIB + 1, 2 * MIB, rng.randrange(3 * MIB, 7 * MIB)]
    for size in sizes:
        src = cli.cwd / f"r{size}.bin"
        src.write_bytes(rng.randbytes(size))
        round_trip(cli, src)


def test_add_json_and_share_and_ls(cli: Cli) -> None:
    src = SAMPLES / "random-5MiB.bin"
    info = json.loads(cli.ok("--json", "add", str(src)))
    assert info["name"] == "random-5MiB.bin" and info["size"] == 5 * MIB
    assert info["blocks"] == 6  # five 1 MiB leaves and the root
    CID.parse(info["cid"])
    # --json also works after the subcommand; `share` imports the same way (then serves until
    # SIGTERM: its first line is the import result)
    share = [*cli.command, "--repo", str(cli.repo), "share", str(SAMPLES / "hello.txt"), "--json"]
    proc = subprocess.Popen(
        [*share, "--listen", "/ip4/127.0.0.1/tcp/0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        shared = json.loads(proc.stdout.readline())
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    assert shared["name"] == "hello.txt"
    listing = json.loads(cli.ok("ls", "--json"))["shares"]
    by_cid = {s["cid"]: s for s in listing}
    assert by_cid[info["cid"]]["shared"] is False and by_cid[shared["cid"]]["shared"] is True
    assert by_cid[info["cid"]]["hash"] == "blake3"
    assert by_cid[info["cid"]]["profile"] == "unixfs-v1-2025"
    text = cli.ok("ls")
    assert info["cid"] in text and "hello.txt" in text


def test_same_cid_with_sha256_and_default_fetch_path(cli: Cli) -> None:
    a = cli.ok("add", "--hash", "sha2-256", str(SAMPLES / "hello.txt"))
    b = cli.ok("add", "--hash", "sha2-256", str(SAMPLES / "hello.txt"))
    assert a == b and a.startswith("bafkrei")  # raw leaf, sha2-256, CIDv1
    assert cli.ok("fetch", a) == a
    assert (cli.cwd / a).read_bytes() == (SAMPLES / "hello.txt").read_bytes()


def test_user_errors_are_one_line(cli: Cli) -> None:
    cli.fails("add", "no-such-file.txt", match="no such file")
    cli.fails("add", str(SAMPLES / "folder"), match="directory")
    cli.fails("fetch", "not-a-cid", "-o", "x", match="malformed CID")
    cli.fails("fetch", "bafyfoo", "-o", "x", match="malformed CID")
    unknown = str(CID.from_data(0x55, b"never added"))
    cli.fails("fetch", unknown, "-o", "x", match="not in the local store")
    cli.fails("pin", unknown, match="not in the local store")
    cli.fails("unpin", unknown, match="not pinned")
    cid = cli.ok("add", str(SAMPLES / "hello.txt"))
    cli.fails("fetch", cid, "-o", str(cli.cwd / "missing-dir" / "f"), match="does not exist")
    assert not (cli.cwd / "x").exists()
    bad_chunk = cli.run("add", str(SAMPLES / "hello.txt"), "--chunk-size", "2MiB")
    assert bad_chunk.returncode == 2 and "chunk size" in bad_chunk.stderr  # usage error


def test_corrupt_block_detected_by_fetch_and_verify(cli: Cli) -> None:
    src = SAMPLES / "random-5MiB.bin"
    cid = cli.ok("add", str(src))
    assert cli.ok("verify").endswith("blocks ok")
    leaf = CID.from_data(0x55, src.read_bytes()[2 * MIB : 3 * MIB])
    corrupt_block(Blockstore(cli.repo / "blocks"), leaf)

    out = cli.cwd / "out.bin"
    line = cli.fails("fetch", cid, "-o", str(out), match="corrupt")
    assert str(leaf) in line
    assert list(cli.cwd.iterdir()) == []  # no output file, no temporary file
    line = cli.fails("verify", match="1 corrupt block")
    # repair: remove the corrupt block, add the file again, fetch works
    cli.fails("verify", "--remove-corrupt", match="removed the corrupt ones")
    cli.fails("fetch", cid, "-o", str(out), match="not in the local store")
    assert cli.ok("add", str(src)) == cid
    assert cli.ok("verify").endswith("blocks ok")
    cli.ok("fetch", cid, "-o", str(out))
    assert out.read_bytes() == src.read_bytes()


def test_pin_unpin_gc(cli: Cli) -> None:
    keep = cli.ok("add", str(SAMPLES / "hello.txt"))
    drop = cli.ok("add", str(SAMPLES / "random-5MiB.bin"))
    assert json.loads(cli.ok("--json", "gc"))["removed_blocks"] == 0
    cli.ok("unpin", drop)
    result = json.loads(cli.ok("gc", "--json"))
    assert (result["removed_blocks"], result["kept_blocks"]) == (6, 1)
    assert 5 * MIB < result["removed_bytes"] < 5 * MIB + 1024  # the leaves plus the root node
    cli.fails("fetch", drop, "-o", "x", match="not in the local store")
    cli.ok("fetch", keep, "-o", "hello")
    # re-adding brings the blocks back; pin works on a complete DAG already in the store
    cli.ok("add", str(SAMPLES / "random-5MiB.bin"))
    cli.ok("unpin", drop)
    assert cli.ok("pin", drop, "--name", "again") == f"pinned {drop}"
    assert json.loads(cli.ok("gc", "--json"))["removed_blocks"] == 0
    names = {s["cid"]: s["name"] for s in json.loads(cli.ok("ls", "--json"))["shares"]}
    assert names == {keep: "hello.txt", drop: "again"}


@pytest.mark.slow
def test_one_gib_round_trip(cli: Cli, tmp_path: Path) -> None:
    """A 1 GiB file through add and fetch, byte-identical (sha256 of both sides)."""
    src = tmp_path / "big.bin"
    size = 1024 * MIB
    digest = hashlib.sha256()
    xof = blake3.blake3(b"fileshare 1 GiB round trip")
    with open(src, "wb") as f:
        for offset in range(0, size, 64 * MIB):
            part = xof.digest(length=64 * MIB, seek=offset)
            digest.update(part)
            f.write(part)
    cid = cli.ok("add", str(src))
    src.unlink()  # the store must hold everything; also frees page cache for the fetch
    out = tmp_path / "big.out"
    cli.ok("fetch", cid, "-o", str(out))
    assert out.stat().st_size == size
    got = hashlib.sha256()
    with open(out, "rb") as f:
        while chunk := f.read(16 * MIB):
            got.update(chunk)
    assert got.hexdigest() == digest.hexdigest()
    out.unlink()
    shutil.rmtree(cli.repo)


def test_committed_samples_match_their_generator() -> None:
    proc = subprocess.run(
        [sys.executable, str(SAMPLES / "make_samples.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout
