"""The trustless gateway resolves paths through sharded (HAMT) directories and sends a sharded
directory's shards as its CAR entity; a real HTTP server on 127.0.0.1, a real repository."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import trio

from fileshare.content.cid import DAG_PB
from fileshare.content.reader import decode_block
from fileshare.content.unixfs import decode_directory
from fileshare.daemon.car import decode_car
from fileshare.daemon.gateway import Gateway
from fileshare.daemon.http import HTTPServer
from fileshare.repo import Repo

from ..storeutil import folder_tree


@asynccontextmanager
async def gateway(repo: Repo) -> AsyncIterator[str]:
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(HTTPServer(Gateway(repo).handle).serve, "127.0.0.1", 0)
        yield f"http://127.0.0.1:{bound[0][1]}"
        nursery.cancel_scope.cancel()


async def get(url: str, **params: str) -> httpx.Response:
    return await trio.to_thread.run_sync(lambda: httpx.get(url, params=params, timeout=30))


async def test_paths_through_a_sharded_directory(tmp_path: Path) -> None:
    files = {f"big/file-{i:05d}.txt": f"file number {i}\n".encode() for i in range(6000)}
    files["small/readme.txt"] = b"a plain directory beside the sharded one\n"
    root, blocks = folder_tree(files)
    dirs = [(c, b) for c, b in blocks if c.codec == DAG_PB]
    root_block = next(b for c, b in dirs if c == root)
    big = next(lk.hash for lk in decode_directory(root_block)[1] if lk.name == "big")
    repo = Repo.open(tmp_path / "repo")
    try:
        repo.blocks.put_many_sync(blocks)
        async with gateway(repo) as base:
            for name in ("file-00000.txt", "file-04711.txt", "file-05999.txt"):
                res = await get(f"{base}/ipfs/{root}/big/{name}")
                assert res.status_code == 200 and res.content == files[f"big/{name}"]
            res = await get(f"{base}/ipfs/{root}/small/readme.txt")
            assert res.status_code == 200 and res.content == files["small/readme.txt"]
            assert (await get(f"{base}/ipfs/{root}/big/file-06000.txt")).status_code == 404

            # the CAR of a path: root, the sharded directory's shards on the way, the file
            res = await get(f"{base}/ipfs/{root}/big/file-04711.txt", format="car")
            assert res.status_code == 200
            roots, car = decode_car(res.content)
            assert roots == [root] and all(c.matches(b) for c, b in car)
            assert car[0][0] == root and car[-1][1] == files["big/file-04711.txt"]
            kinds = [decode_block(c, b).kind for c, b in car[1:-1]]
            assert car[1][0] == big and set(kinds) == {
                "hamt"
            }  # big's root shard, then child shards

            # a sharded directory's entity: every shard, no file
            res = await get(f"{base}/ipfs/{root}/big", format="car", **{"dag-scope": "entity"})
            _, car = decode_car(res.content)
            shards = [c for c, b in car if decode_block(c, b).kind == "hamt"]
            expected = {c for c, b in dirs if decode_block(c, b).kind == "hamt"}
            assert set(shards) == expected and big in expected
            assert all(decode_block(c, b).kind != "raw" for c, b in car)
    finally:
        repo.close()
