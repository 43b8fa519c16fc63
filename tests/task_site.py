"""An engineer's task package in a folder outside the repository, importable for one test."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def write_task_package(root: Path, name: str, source: str) -> Path:
    """root/name/ with an empty __init__.py and task.py holding `source` (dedented)."""
    pkg = root / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "task.py").write_text(textwrap.dedent(source))
    return pkg


@contextmanager
def task_site(root: Path) -> Iterator[Path]:
    """`root` on sys.path while the block runs; modules imported from it are forgotten after."""
    root.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(root))
    before = set(sys.modules)
    try:
        yield root
    finally:
        sys.path.remove(str(root))
        for name in set(sys.modules) - before:
            if not name.startswith(("consortium", "torch", "numpy")):
                del sys.modules[name]
