#!/usr/bin/env python3
"""Set-up and entry points that need nothing but python3 (and node/npm for interop tests).

    python3 tools/dev.py demo    # creates .venv, installs fileshare, runs the demo
    python3 tools/dev.py test    # also installs test deps and the JS test peers, then lint + types + tests

Everything is idempotent: the venv and node_modules are rebuilt only when pyproject.toml or the
npm lock file changed (a stamp file records their hashes).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
PY = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
JS_DIR = ROOT / "tests" / "interop" / "js"


def run(cmd: list[str], **kw: object) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=kw.pop("cwd", ROOT), **kw)  # type: ignore[arg-type]


def digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes() if p.exists() else b"-")
    return h.hexdigest()


def ensure_venv(extras: str) -> None:
    stamp = VENV / f".fileshare-installed-{extras or 'base'}"
    want = digest(ROOT / "pyproject.toml")
    if stamp.exists() and stamp.read_text() == want and PY.exists():
        return
    if not PY.exists():
        print(f"+ creating virtualenv {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    run([str(PY), "-m", "pip", "install", "-q", "--upgrade", "pip"])
    target = f".[{extras}]" if extras else "."
    run([str(PY), "-m", "pip", "install", "-q", "-e", target])
    stamp.write_text(want)


def compile_sources() -> None:
    """Byte-compile our packages, as a regular (non-editable) install does.

    An editable install leaves them as source, and where PYTHONDONTWRITEBYTECODE is set (as on
    some CI machines) every `fileshare` process the demo or the tests start would compile them
    again: ~0.1 s of CPU per process start. Only changed files are recompiled.
    """
    subprocess.run([str(PY), "-m", "compileall", "-q", "fileshare", "cli"], check=True, cwd=ROOT)


def ensure_node_modules() -> None:
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        print("! node/npm not found: the js-libp2p/Helia interop tests will be skipped", flush=True)
        return
    stamp = JS_DIR / "node_modules" / ".fileshare-stamp"
    want = digest(JS_DIR / "package-lock.json")
    if stamp.exists() and stamp.read_text() == want:
        return
    run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=JS_DIR)
    stamp.write_text(want)


def cmd_test(args: list[str]) -> int:
    ensure_venv("test")
    ensure_node_modules()
    compile_sources()
    bin_dir = PY.parent
    run([str(bin_dir / "ruff"), "check", "fileshare", "cli", "tests", "bench", "tools"])
    run([str(bin_dir / "mypy"), "--strict", "fileshare", "cli"])
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run(
        [str(PY), "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=ROOT, env=env
    ).returncode


def cmd_demo(args: list[str]) -> int:
    ensure_venv("")
    compile_sources()
    return subprocess.run([str(PY), str(ROOT / "tools" / "demo.py"), *args], cwd=ROOT).returncode


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("demo", "test", "setup"):
        print(__doc__)
        return 2
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "setup":
        ensure_venv("test")
        ensure_node_modules()
        compile_sources()
        return 0
    return cmd_test(rest) if command == "test" else cmd_demo(rest)


if __name__ == "__main__":
    sys.exit(main())
