"""Our DagBuilder (sha2-256) must produce the same CIDs as the reference JS UnixFS importer.

Every block CID is compared (as a multiset), not only the root. The same files built with blake3
must give the same DAG shape. Skipped only when ``node`` is not installed.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import trio

from fileshare.content.builder import Block, DagBuilder
from fileshare.content.cid import BLAKE3, CID, SHA2_256
from fileshare.content.layout import PROFILES, Layout
from fileshare.content.reader import Node, decode_block, read_file

pytestmark = pytest.mark.interop

JS_DIR = Path(__file__).parent / "js"
SCRIPT = JS_DIR / "importer_cids.mjs"
NODE = shutil.which("node")

V1 = PROFILES["unixfs-v1-2025"]
V0 = PROFILES["unixfs-v0-2015"]


@dataclass(frozen=True)
class Case:
    name: str
    layout: Layout
    size: int
    profile: str | None = None  # let the importer apply its own IPIP-499 profile


def _sizes(c: int, m: int, three_levels: bool = True) -> dict[str, int]:
    sizes = {
        "empty": 0,
        "one-byte": 1,
        "one-chunk": c,
        "chunk-plus-one": c + 1,
        "full-node": m * c,
        "full-node-plus-one": m * c + 1,
    }
    if three_levels:
        sizes["two-full-levels"] = m * m * c
        sizes["three-levels"] = m * m * c + 2 * c + 7
    return sizes


def _cases() -> list[Case]:
    configs: dict[str, tuple[Layout, bool]] = {
        "v1-c1024-m4": (replace(V1, chunk_size=1024, max_links=4), True),
        "v1-c1024-m11": (replace(V1, chunk_size=1024, max_links=11), True),
        "v1-c1-m1024": (replace(V1, chunk_size=1), False),  # the profile's real fan-out
        "v0-c1024-m4": (replace(V0, chunk_size=1024, max_links=4), True),
        "v0-c8-m174": (replace(V0, chunk_size=8), True),  # the profile's real fan-out, 3 levels
    }
    cases = []
    for cname, (layout, deep) in configs.items():
        for sname, size in _sizes(layout.chunk_size, layout.max_links, deep).items():
            cases.append(Case(f"{cname}/{sname}", layout, size))
    mib = 1 << 20
    for pname, layout in PROFILES.items():
        c = layout.chunk_size
        for sname, size in {
            "empty": 0,
            "one-byte": 1,
            "one-chunk": c,
            "chunk-plus-one": c + 1,
            "about-3mib": 3 * mib + 12345,
        }.items():
            cases.append(Case(f"{pname}/{sname}", layout, size, profile=pname))
    return cases


CASES = _cases()


def _content(case: Case) -> bytes:
    return random.Random(case.name).randbytes(case.size)


def _build(layout: Layout, data: bytes) -> tuple[CID, list[Block]]:
    builder = DagBuilder(layout)
    blocks: list[Block] = []
    view = memoryview(data)
    for i in range(0, len(data), layout.chunk_size):
        blocks += builder.add_chunk(bytes(view[i : i + layout.chunk_size]))
    root, rest = builder.finish()
    assert builder.size == len(data)
    return root, blocks + rest


@pytest.fixture(scope="module")
def js_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if NODE is None:
        pytest.skip("node is not installed: cannot run the JS UnixFS importer")
    assert (JS_DIR / "node_modules" / "ipfs-unixfs-importer").is_dir(), (
        "run `npm ci` in tests/interop/js"
    )
    tmp = tmp_path_factory.mktemp("importer")
    spec = []
    for i, case in enumerate(CASES):
        path = tmp / f"file{i}.bin"
        path.write_bytes(_content(case))
        entry: dict[str, Any] = {"name": case.name, "path": str(path)}
        if case.profile:
            entry["profile"] = case.profile
        else:
            entry |= {
                "chunkSize": case.layout.chunk_size,
                "maxChildrenPerNode": case.layout.max_links,
                "cidVersion": case.layout.cid_version,
                "rawLeaves": case.layout.raw_leaves,
                "reduceSingleLeafToSelf": True,
            }
        spec.append(entry)
    spec_path = tmp / "cases.json"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.run(
        [NODE, str(SCRIPT), str(spec_path)],
        cwd=JS_DIR,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cids_match_js_importer(case: Case, js_results: dict[str, Any]) -> None:
    assert case.layout.hash_code == SHA2_256
    data = _content(case)
    root, blocks = _build(case.layout, data)
    expected = js_results[case.name]
    assert str(root) == expected["root"]
    assert Counter(str(b.cid) for b in blocks) == Counter(expected["blocks"])
    # every block decodes, and the file reads back
    store = {b.cid: b.data for b in blocks}
    for b in blocks:
        decode_block(b.cid, b.data)
    assert trio.run(_read_all, root, store) == data


async def _read_all(root: CID, store: dict[CID, bytes]) -> bytes:
    async def get(cid: CID) -> bytes:
        return store[cid]

    return b"".join([chunk async for chunk in read_file(root, get)])


def _shape(root: CID, store: dict[CID, bytes], with_tsize: bool) -> Any:
    """The DAG without its hashes: kinds, link counts, sizes (and Tsizes), recursively."""
    node: Node = decode_block(root, store[root])
    children = [_shape(link.hash, store, with_tsize) for link in node.links]
    tsizes = [link.tsize for link in node.links] if with_tsize else None
    return (node.kind, len(node.data), node.filesize, node.blocksizes, tsizes, children)


SHAPE_CASES = [c for c in CASES if c.size < 200_000]


@pytest.mark.parametrize("case", SHAPE_CASES, ids=[c.name for c in SHAPE_CASES])
def test_blake3_same_shape(case: Case) -> None:
    data = _content(case)
    sha_root, sha_blocks = _build(case.layout, data)
    b3_layout = case.layout.with_hash(BLAKE3)
    b3_root, b3_blocks = _build(b3_layout, data)
    assert b3_root.hash_code == BLAKE3 and b3_root.version == 1
    assert len(b3_blocks) == len(sha_blocks)
    # CIDv1 sha2-256 and blake3 CIDs have the same length, so Tsizes match too; CIDv0 is shorter.
    with_tsize = case.layout.cid_version == 1
    sha_store = {b.cid: b.data for b in sha_blocks}
    b3_store = {b.cid: b.data for b in b3_blocks}
    assert _shape(b3_root, b3_store, with_tsize) == _shape(sha_root, sha_store, with_tsize)
