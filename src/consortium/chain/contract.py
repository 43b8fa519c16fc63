"""Compile the TreeHeadAnchor Vyper contract, once per source text.

The contract ships as source and is compiled with the installed `vyper` at run time, pinned to the
`shanghai` EVM so any node (anvil, hardhat, geth, Besu, ganache, eth-tester) runs it. Compiling
takes about half a second, so results are cached in memory and, when a cache folder is given, in a
JSON file named by the hash of (source, compiler version, EVM version). A file in a folder
someone else can write is only a speed-up: `cache_dir=None` always gives our own compiler's output.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consortium.core.errors import ChainError
from consortium.core.files import atomic_write

SOURCE_PATH = Path(__file__).with_name("TreeHeadAnchor.vy")
EVM_VERSION = "shanghai"


@dataclass(frozen=True)
class CompiledContract:
    abi: list[dict[str, Any]]
    bytecode: str  # init code, 0x-prefixed hex
    bytecode_runtime: str  # code the chain stores at the contract address, 0x-prefixed hex
    key: str  # hash naming this compilation


_memory: dict[str, CompiledContract] = {}


def _cache_key(source: str) -> str:
    import vyper

    h = hashlib.sha256()
    for part in (source, str(vyper.__version__), EVM_VERSION):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


_COMPILE_LOCK = threading.Lock()


def compiled_contract(cache_dir: Path | None = None, source: str | None = None) -> CompiledContract:
    """The compiled anchor contract (ABI and bytecode), from cache when possible."""
    text = SOURCE_PATH.read_text() if source is None else source
    key = _cache_key(text)
    if key in _memory:
        return _memory[key]
    path = Path(cache_dir) / f"TreeHeadAnchor-{key[:16]}.json" if cache_dir else None
    if path and (cached := _load(path, key)) is not None:
        return cached  # not kept in memory: only our own compiler's output is trusted there
    with _COMPILE_LOCK:  # vyper keeps global compiler settings: one compile at a time
        result = _memory.get(key) or _compile(text, key)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(_to_json(result)).encode())
    _memory[key] = result
    return result


def _compile(source: str, key: str) -> CompiledContract:
    from vyper.compiler import compile_code
    from vyper.compiler.settings import Settings
    from vyper.exceptions import VyperException

    try:
        out = compile_code(
            source,
            contract_path="TreeHeadAnchor.vy",
            output_formats=["abi", "bytecode", "bytecode_runtime"],
            settings=Settings(evm_version=EVM_VERSION),
        )
    except VyperException as exc:
        raise ChainError(f"anchor contract does not compile: {exc}") from exc
    return CompiledContract(out["abi"], out["bytecode"], out["bytecode_runtime"], key)


def _to_json(c: CompiledContract) -> dict[str, Any]:
    return {"key": c.key, "abi": c.abi, "bytecode": c.bytecode, "runtime": c.bytecode_runtime}


def _load(path: Path, key: str) -> CompiledContract | None:
    # A missing, stale or damaged cache file is simply recompiled over.
    try:
        data = json.loads(path.read_text())
        if data["key"] != key:
            return None
        return CompiledContract(data["abi"], data["bytecode"], data["runtime"], key)
    except (OSError, ValueError, KeyError, TypeError):
        return None
