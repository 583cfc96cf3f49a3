"""The trio side of one fetch: a sans-io ``Session`` driven by messages, timers and the store.

``FetchSession.pump()`` polls the session and carries out what it asks: wants go to the peers'
outbound streams (through the ``BitswapService``), verified blocks are written to the store in a
worker thread (then the server may answer wants that waited for them), together with their file
bytes into ``output`` when there is one, local look-ups (resume) run in a worker thread. The service's inbound handlers feed the session and pump; ``run()`` adds
the timers (``next_deadline``), progress ticks and the stall timeout, and returns once every block
is in the store.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import trio

from ...content.blockstore import Blockstore, NoSpace
from ...content.cid import CID, RAW
from ...errors import FileshareError, NotFound, VerificationError
from ...identity.peerid import PeerId
from .messages import PROTOCOL_1_2_0
from .session import Session
from .session_types import CheckLocal, PeerDropped, SendWants, SessionConfig, StoreBlock

if TYPE_CHECKING:
    from .service import BitswapService

__all__ = ["FetchSession", "FetchStalled", "FileOutput"]

log = logging.getLogger("fileshare.protocols.bitswap.client")

_MAX_ROUNDS = 64  # poll rounds per pump (each CheckLocal answer allows one more)


class FetchStalled(FileshareError):
    """No block arrived for the stall timeout: no reachable provider serves what is missing."""


class FileOutput:
    """A regular file open for writing: the fetched file's bytes go to their offsets as the
    verified blocks arrive (``written`` counts them)."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name
        self.written = 0


def _write_blocks(
    blocks: Blockstore, stores: Sequence[StoreBlock], output: FileOutput | None
) -> int:
    """Worker thread: put verified blocks in the store and their file bytes in ``output``."""
    blocks.put_many_sync([(s.cid, s.data) for s in stores], verified=True)
    if output is None:
        return 0
    n = 0
    try:
        for s in stores:
            for offset, data in s.parts:
                view = memoryview(data)
                while view:
                    k = os.pwrite(output.fd, view, offset)
                    view, offset, n = view[k:], offset + k, n + k
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpace(f"no space left on device to write {output.name}") from exc
        raise
    return n


def _lookup(blocks: Blockstore, cids: Sequence[CID]) -> list[tuple[CID, bool, bytes | None]]:
    """Worker thread: which blocks are present (with the bytes of inner nodes, verified).

    A corrupt inner node is deleted so the fetch replaces it.
    """
    out: list[tuple[CID, bool, bytes | None]] = []
    for cid in cids:
        if cid.codec == RAW:
            out.append((cid, blocks.has_sync(cid), None))
            continue
        try:
            out.append((cid, True, blocks.get_sync(cid, verify=True)))
        except NotFound:
            out.append((cid, False, None))
        except VerificationError as exc:
            log.warning("refetching %s: %s", cid, exc)
            blocks.delete_sync(cid)
            out.append((cid, False, None))
    return out


class FetchSession:
    """One fetch of the DAG under ``root``. Create it with ``BitswapService.session``."""

    def __init__(
        self,
        service: BitswapService,
        root: CID,
        config: SessionConfig,
        output: FileOutput | None = None,
    ) -> None:
        self.service = service
        self.root = root
        self.output = output
        self.session: Session[PeerId] = Session(root, config=config, file_parts=output is not None)
        self.accept_new_peers = True
        self.wanted: set[bytes] = set()  # multihashes we ever asked anyone for
        self.peers: set[PeerId] = set()
        self.dropped: dict[PeerId, str] = {}
        self.error: FileshareError | None = None
        self.last_block = trio.current_time()  # last time a block was stored or found locally
        self._writes = 0
        self._wake = trio.Event()

    # --- peers ---

    def has_peer(self, peer: PeerId) -> bool:
        return peer in self.peers

    def asked(self, peer: PeerId) -> bool:
        """Whether ``peer`` owes us blocks in this session."""
        if peer not in self.peers:
            return False
        stats = self.session.peer_stats().get(peer)
        return stats is not None and stats.in_flight > 0

    async def add_peer(self, peer: PeerId, *, has_blocks: bool) -> bool:
        """Fetch from a connected ``peer`` too; False if it does not speak bitswap."""
        if peer in self.dropped or peer == self.service.host.peer_id:
            return False
        protocol = await self.service.open_link(peer)
        if protocol is None:
            return False
        if self.session.done or self.session.error is not None:
            return False
        self.session.add_peer(
            peer,
            trio.current_time(),
            has_blocks=has_blocks,
            supports_have=protocol == PROTOCOL_1_2_0,
        )
        self.peers.add(peer)
        await self.pump()
        self.wake()
        return True

    async def remove_peer(self, peer: PeerId) -> None:
        if peer in self.peers:
            self.peers.discard(peer)
            self.session.remove_peer(peer, trio.current_time())
            await self.pump()
            self.wake()

    # --- driving the session ---

    def wake(self) -> None:
        self._wake.set()

    @property
    def complete(self) -> bool:
        """Every block is verified and written."""
        return self.session.done and self._writes == 0

    async def pump(self) -> None:
        """Poll the session and carry out its actions (wants, writes, local look-ups)."""
        for _ in range(_MAX_ROUNDS):
            actions = self.session.poll(trio.current_time())
            if not actions:
                break
            stores: list[StoreBlock] = []
            checks: list[CID] = []
            for action in actions:
                if isinstance(action, SendWants):
                    self.service.send_wants(self, action.peer, action.entries)
                elif isinstance(action, StoreBlock):
                    stores.append(action)
                elif isinstance(action, CheckLocal):
                    checks.extend(action.cids)
                elif isinstance(action, PeerDropped):
                    self._dropped(action.peer, action.reason)
            del actions
            if stores:
                await self._store(stores)
            if not checks:
                break
            await self._check_local(checks)

    def _dropped(self, peer: PeerId, reason: str) -> None:
        log.warning("fetch of %s: no longer asking %s: %s", self.root, peer, reason)
        self.peers.discard(peer)
        self.dropped[peer] = reason

    async def _store(self, stores: list[StoreBlock]) -> None:
        self._writes += 1
        try:
            written = await trio.to_thread.run_sync(
                _write_blocks, self.service.blocks, stores, self.output
            )
        except (FileshareError, OSError) as exc:
            self.error = exc if isinstance(exc, FileshareError) else FileshareError(str(exc))
            return
        finally:
            self._writes -= 1
            self.wake()
        if self.output is not None:
            self.output.written += written
        self.last_block = trio.current_time()
        self.service.blocks_added(s.cid for s in stores)

    async def _check_local(self, cids: list[CID]) -> None:
        results = await trio.to_thread.run_sync(_lookup, self.service.blocks, cids)
        for cid, present, data in results:
            self.session.local_result(cid, present, data)
        self.last_block = trio.current_time()

    async def finish(self) -> None:
        """Withdraw whatever is still asked for (cancels)."""
        await self.pump()

    async def run(
        self,
        *,
        stall_timeout: float,
        on_tick: Callable[[], Awaitable[None]] | None = None,
        tick_interval: float = 0.5,
    ) -> None:
        """Drive the session until every block is stored; raises its error or ``FetchStalled``."""
        await self.pump()
        next_tick = trio.current_time() + tick_interval
        while True:
            if self.error is not None:
                raise self.error
            if self.session.error is not None:
                raise self.session.error
            if self.complete:
                return
            now = trio.current_time()
            if now - self.last_block >= stall_timeout:
                raise FetchStalled(self._stall_message(stall_timeout))
            deadlines = [next_tick, self.last_block + stall_timeout]
            session_deadline = self.session.next_deadline()
            if session_deadline is not None:
                deadlines.append(session_deadline)
            with trio.move_on_at(min(deadlines)):
                await self._wake.wait()
            self._wake = trio.Event()  # set again by inputs that arrive while we pump
            await self.pump()
            if on_tick is not None and trio.current_time() >= next_tick:
                next_tick = trio.current_time() + tick_interval
                await on_tick()

    def _stall_message(self, stall_timeout: float) -> str:
        progress = self.session.progress()
        left = progress.blocks_known - progress.blocks_done
        if not self.peers and not self.dropped:
            who = "no provider is reachable"
        elif not self.peers:
            reasons = "; ".join(f"{p}: {r}" for p, r in list(self.dropped.items())[:3])
            who = f"every provider was dropped ({reasons})"
        else:
            who = f"{len(self.peers)} provider(s) connected but none sent what is missing"
        return (
            f"fetch of {self.root} made no progress for {stall_timeout:g} s: {who}; "
            f"{left} of {progress.blocks_known} known blocks missing (run the fetch again to "
            "resume, with --peer MULTIADDR of a peer that has the file)"
        )
