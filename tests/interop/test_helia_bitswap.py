"""Bitswap with Helia (js): Helia fetches what we serve, we fetch what Helia added.

Our side is the real command line: `fileshare add` + `fileshare daemon` (which serves every block
of its repository) and `fileshare fetch --peer`. Helia runs in the JS test peer (lib/helia.mjs),
with a blake3 hasher from hash-wasm so it can verify our default CIDs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from fileshare.repo import Repo

from ..storeutil import folder_tree
from .peers import DaemonFactory, PeerFactory, payload_chunks, payload_sha256, run_cli

MIB = 1024 * 1024


def write_payload(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        for part in payload_chunks(size):
            f.write(part)
    return path


@pytest.mark.parametrize(
    ("size", "add_args"),
    [
        (5 * MIB + 3, ()),  # blake3 (Helia needs the hash-wasm hasher), 1 MiB raw leaves
        (5 * MIB + 3, ("--hash", "sha2-256")),
        (5 * MIB + 3, ("--chunk-size", "4KiB")),  # 1280 leaves: a two-level DAG
        (100_000, ("--hash", "sha2-256", "--profile", "unixfs-v0-2015")),  # CIDv0, dag-pb leaf
    ],
    ids=["blake3", "sha2-256", "blake3-2-levels", "sha2-256-v0"],
)
async def test_helia_fetches_our_share(
    tmp_path: Path,
    js_peer: PeerFactory,
    fileshare_daemon: DaemonFactory,
    size: int,
    add_args: tuple[str, ...],
) -> None:
    src = write_payload(tmp_path / "payload.bin", size)
    repo = tmp_path / "repo"
    added = await run_cli(["add", str(src), *add_args], repo)
    assert added.returncode == 0, added.stderr
    cid = added.stdout.strip()
    daemon = await fileshare_daemon(repo)
    peer = await js_peer(services=["identify", "helia"])
    got = await peer.command("helia_cat", cid=cid, addr=daemon.addr)
    assert (got["bytes"], got["sha256"]) == (size, payload_sha256(size))


@pytest.mark.parametrize(
    ("size", "chunk"),
    [(5 * MIB + 3, None), (1536 * 1024 + 5, 1024)],  # defaults; 1 KiB chunks: two levels
    ids=["helia-defaults", "two-levels"],
)
async def test_we_fetch_what_helia_added(
    tmp_path: Path, js_peer: PeerFactory, size: int, chunk: int | None
) -> None:
    peer = await js_peer(services=["identify", "helia"])
    info = await peer.command("helia_info")
    addr = next(a for a in info["addrs"] if a.startswith("/ip4/127.0.0.1/"))
    added = await peer.command("helia_add", size=size, **({"chunk": chunk} if chunk else {}))
    cid = added["cid"]
    assert cid.startswith("bafy")  # CIDv1 dag-pb root (sha2-256, raw leaves)
    out = tmp_path / "out.bin"
    res = await run_cli(["--json", "fetch", cid, "-o", str(out), "--peer", addr], tmp_path / "r")
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout.splitlines()[-1])
    assert result["size"] == size and result["peers"] == {info["peer_id"]: result["bytes_fetched"]}
    assert hashlib.sha256(out.read_bytes()).hexdigest() == payload_sha256(size)


async def test_helia_reads_our_sharded_directory(
    tmp_path: Path, js_peer: PeerFactory, fileshare_daemon: DaemonFactory
) -> None:
    """A folder tree as `fileshare sync` builds it (blake3), with a 5,000-entry sharded (HAMT)
    directory: Helia lists it and reads a file through it by path, over bitswap from our daemon."""
    files = {f"many/entry-{i:05d}.txt": f"entry {i}\n".encode() for i in range(5000)}
    files["docs/readme.txt"] = b"a plain directory beside the sharded one\n"
    root, blocks = folder_tree(files)
    repo = Repo.open(tmp_path / "repo")
    try:
        repo.blocks.put_many_sync(blocks)
    finally:
        repo.close()
    daemon = await fileshare_daemon(tmp_path / "repo")
    peer = await js_peer(services=["identify", "helia"])
    listed = await peer.command("helia_ls", cid=str(root), addr=daemon.addr, path="many")
    assert sorted(listed["names"]) == sorted(p.split("/")[1] for p in files if "many/" in p)
    for name in ("many/entry-00000.txt", "many/entry-03141.txt", "docs/readme.txt"):
        got = await peer.command("helia_cat", cid=str(root), path=name)
        assert got["sha256"] == hashlib.sha256(files[name]).hexdigest(), name
