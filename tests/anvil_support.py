"""Find and start anvil (Foundry's dev Ethereum node) for tests that need a real JSON-RPC node.

Install it (44 MB, no postinstall needed) with `make anvil`, i.e.
    npm install --prefix .tmp/anvil --no-audit --no-fund @foundry-rs/anvil@1.7.1
or put `anvil` on PATH, or point CONSORTIUM_ANVIL at the binary. Tests skip when none is found.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: anvil's first development account (public, well known: funded with 10000 ETH at its genesis).
ANVIL_DEV_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
SKIP_REASON = (
    "anvil not installed: `make anvil` (npm install --prefix .tmp/anvil @foundry-rs/anvil@1.7.1), "
    "or put anvil on PATH, or set CONSORTIUM_ANVIL"
)


def find_anvil() -> str | None:
    if env := os.environ.get("CONSORTIUM_ANVIL"):
        if not os.access(env, os.X_OK):
            pytest.fail(f"CONSORTIUM_ANVIL={env} is not an executable file")
        return env
    if on_path := shutil.which("anvil"):
        return on_path
    # the native binary npm puts in the platform package (avoids the node wrapper's start-up)
    native = sorted((REPO / ".tmp/anvil/node_modules/@foundry-rs").glob("anvil-*/bin/anvil"))
    return str(native[0]) if native else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_anvil() -> Iterator[str]:
    """Start anvil on a free 127.0.0.1 port and yield its URL (skip the test if absent)."""
    binary = find_anvil()
    if binary is None:
        pytest.skip(SKIP_REASON)
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--host", "127.0.0.1", "--port", str(port), "--silent"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                pytest.fail(f"anvil exited with {proc.returncode}: {err[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("anvil did not open its port within 30 s")
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
