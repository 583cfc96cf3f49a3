"""Our sharded (HAMT) directories must be the JS UnixFS importer's, block for block.

The reference importer (ipfs-unixfs-importer, run under node) builds a directory of the same
files with a tiny shard threshold, so it shards at once and nests shards; we build the same
entries with ``build_hamt`` and compare every block. Entry names include non-ASCII text, and the
murmur3-x64-64 bucket hash is compared on its own too. Skipped only when ``node`` is missing.
"""

from __future__ import annotations

import base64
import json
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fileshare.content.cid import CID, RAW, SHA2_256
from fileshare.content.dagpb import PBLink
from fileshare.content.hamt import build_hamt, hamt_entries, hamt_lookup
from fileshare.content.murmur3 import murmur3_x64_64

pytestmark = pytest.mark.interop

JS_DIR = Path(__file__).parent / "js"
SCRIPT = JS_DIR / "hamt_dir.mjs"
NODE = shutil.which("node")


def _names(n: int) -> list[str]:
    rng = random.Random(499)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789-_. éüßжλ漢字🙂"
    names: set[str] = set()
    while len(names) < n:
        name = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24))).strip()
        if name and name not in (".", ".."):
            names.add(name)
    return sorted(names)


@pytest.fixture(scope="module")
def js_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[list[str]], dict[str, Any]]:
    if NODE is None:
        pytest.skip("node is not installed: cannot run the JS UnixFS importer")
    files = [[name, f"content of {name} #{i}"] for i, name in enumerate(_names(2500))]
    spec = tmp_path_factory.mktemp("hamt") / "input.json"
    spec.write_text(json.dumps({"threshold": 1000, "files": files, "hash": [f[0] for f in files]}))
    proc = subprocess.run(
        [NODE, str(SCRIPT), str(spec)], cwd=JS_DIR, capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return files, json.loads(proc.stdout)


def test_murmur3_matches_js(js_dir: tuple[list[list[str]], dict[str, Any]]) -> None:
    files, js = js_dir
    for name, _ in files:
        assert murmur3_x64_64(name.encode()).hex() == js["murmur"][name], name


def test_hamt_blocks_match_js(js_dir: tuple[list[list[str]], dict[str, Any]]) -> None:
    files, js = js_dir
    links = []
    for name, text in files:
        cid = CID.from_data(RAW, text.encode(), SHA2_256)
        assert str(cid) == js["files"][name]
        links.append(PBLink(cid, name, len(text.encode())))
    root, _, blocks = build_hamt(links, SHA2_256)
    assert str(root) == js["root"]
    ours = {str(b.cid): b.data for b in blocks}
    theirs = {
        c: base64.b64decode(d) for c, d in js["blocks"].items() if c not in js["files"].values()
    }
    assert ours == theirs  # every shard, byte for byte
    assert len(blocks) > 257  # nested: the root's buckets hold child shards
    by_cid = {b.cid: b.data for b in blocks}
    assert {lk.name for lk in hamt_entries(by_cid[root], by_cid.__getitem__)} == {
        f[0] for f in files
    }
    for name, text in files[::250]:
        found, _ = hamt_lookup(by_cid[root], name, by_cid.__getitem__)
        assert found is not None and found.tsize == len(text.encode())
