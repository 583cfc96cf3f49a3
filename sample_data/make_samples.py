"""Regenerate the sample files in this folder (deterministic: same bytes on every machine).

    python sample_data/make_samples.py        # rewrite the samples
    python sample_data/make_samples.py --check  # exit 1 if a committed sample differs

``random-5MiB.bin`` is the blake3 extendable output (XOF) of a fixed seed: incompressible,
reproducible, and generated at over 1 GB/s. ``xof_bytes`` is also used by the benchmark and tests.
"""

from __future__ import annotations

import sys
from pathlib import Path

import blake3

HERE = Path(__file__).resolve().parent
SEED = b"fileshare sample data v1"
MIB = 1024 * 1024


def xof_bytes(seed: bytes, length: int, offset: int = 0) -> bytes:
    """``length`` deterministic pseudo-random bytes: blake3(seed) XOF output from ``offset``."""
    return blake3.blake3(seed).digest(length=length, seek=offset)


SAMPLES: dict[str, bytes] = {
    "hello.txt": b"Hello from fileshare!\nThis small text file is a sample for `fileshare add`.\n",
    "random-5MiB.bin": xof_bytes(SEED, 5 * MIB),
    "folder/README.txt": b"A small folder tree used by the sync samples.\n",
    "folder/docs/notes.txt": b"Notes\n=====\n\n- first note\n- second note\n",
    "folder/docs/todo.txt": b"todo: share this folder\n",
    "folder/photos/caption.txt": b"A caption for a photo that is not here.\n",
    "folder/photos/list.txt": b"beach.jpg\nmountain.jpg\n",
}


def main(argv: list[str]) -> int:
    check = "--check" in argv
    bad = 0
    for rel, data in SAMPLES.items():
        path = HERE / rel
        if check:
            if not path.is_file() or path.read_bytes() != data:
                print(f"differs: {rel}")
                bad += 1
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        print(f"wrote {rel} ({len(data)} bytes)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
