"""Shared fixtures."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    """Leave the root logger as each test found it: `node start` run through CliRunner calls
    `logging.basicConfig(force=True)`, whose handler writes to a stream CliRunner closes, so every
    later test that logs printed 'Logging error' tracebacks."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in root.handlers:
        if h not in handlers:
            root.removeHandler(h)
    for h in handlers:
        if h not in root.handlers:
            root.addHandler(h)
    root.setLevel(level)


@pytest.fixture(autouse=True, scope="session")
def _generator_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """SecAgg+ commitment generators cached in a folder of this test session (node processes
    the tests start inherit it), never in the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CONSORTIUM_CACHE_DIR", str(tmp_path_factory.mktemp("consortium-cache")))
    yield
    mp.undo()
