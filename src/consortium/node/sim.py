"""Start a whole consortium on 127.0.0.1 as separate OS processes (the demo and e2e tests).

Each member gets its own folder (keys, genesis, node.toml, ledger, store) and its own
`consortium node start` process; nothing is shared but the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from consortium.chain.accounts import derive_account
from consortium.consent.registry import ConsentRegistry, GrantRow
from consortium.core.errors import ConsortiumError
from consortium.core.files import atomic_write
from consortium.core.genesis import DEFAULT_UNIXFS_PROFILE, GENESIS_FILE, Genesis, Purpose
from consortium.core.identity import NodeIdentity
from consortium.core.layout import CONSENT_FILE, NODE_CONFIG_FILE, STATUS_FILE
from consortium.core.threshold import SecretShare, seeded_bytes
from consortium.learning import load_dataset
from consortium.learning.builtin import node_shard
from consortium.node.config import load_node_config
from consortium.protocol.beacon import beacon_message, make_partial, value_from_partials
from consortium.protocol.schedule import leader_for


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def member_shares(dirs: list[Path], genesis: Genesis) -> list[SecretShare]:
    """The beacon group's key shares, from member folders on this disk (simulations only)."""
    ids = [NodeIdentity.load(d) for d in dirs]
    return [genesis.secret_share(i) for i in ids if genesis.in_beacon_group(i.node_id)]


def scheduled_leader(
    genesis: Genesis, shares: list[SecretShare], run_id: str, round_no: int, attempt: int = 0
) -> str:
    """The leader of an attempt of a round before the round begins: a simulation holds every
    member's keys, so it makes the round's beacon from t shares, as the members will."""
    members = genesis.member_ids()
    message = beacon_message(genesis.digest(), run_id, round_no)
    partials = [make_partial(s, message) for s in shares[: genesis.threshold]]
    value = value_from_partials(genesis.group_key(), message, partials)
    return leader_for(value, round_no, attempt, members)


def create_consortium(
    root: Path,
    n: int,
    *,
    dataset: str = "digits",
    partition: str = "dirichlet",
    alpha: float = 0.5,
    seed: int = 0,
    purpose: Purpose | None = None,
    data_dir: str | None = None,
    reproducible: bool = False,
    consent: bool = True,
    allow_plaintext: bool = False,
    unixfs_profile: str = DEFAULT_UNIXFS_PROFILE,
    beacon_group: int = 0,
) -> list[Path]:
    """Create n member folders under root with a fully signed genesis and per-node data shards.

    `beacon_group`: the beacon group's size (`beacon_group_of`; 0: every member).

    With `consent`, every record of a node's shard gets a synthetic data subject who consents to
    the purpose (`synthetic_subject`); otherwise the nodes are configured with consent = "off".
    `reproducible` derives keys and times from `seed` (simulations that must give the same root).
    `allow_plaintext` writes a `[policy]` that accepts runs without secure aggregation.
    """
    if n < 1:
        raise ConsortiumError("a consortium needs at least one node")
    root.mkdir(parents=True, exist_ok=True)
    ports = [7000 + i for i in range(n)] if reproducible else free_ports(n)
    ids = [
        NodeIdentity.generate(
            f"node{i}", f"127.0.0.1:{port}", seed=f"{seed}/{i}".encode() if reproducible else None
        )
        for i, port in enumerate(ports)
    ]
    for ident in ids:
        ident.evm_address = derive_account(ident).address
    created = 1_767_225_600 if reproducible else int(time.time())
    # Reproducible runs deal from a seeded PRG so the same seed gives the same root.
    random = seeded_bytes(f"{seed}/dkg".encode()) if reproducible else os.urandom
    genesis = Genesis.ceremony(
        "demo",
        ids,
        [purpose or Purpose("research")],
        created,
        random=random,
        unixfs_profile=unixfs_profile,
        beacon_members=beacon_group_of([i.node_id for i in ids], beacon_group),
    )
    genesis.verify()
    dirs = []
    manifest = genesis.file_bytes()  # once: it is O(n) bytes and every folder gets a copy
    for i, ident in enumerate(ids):
        d = root / ident.name
        ident.save(d)
        atomic_write(d / GENESIS_FILE, manifest)
        dd = f'data_dir = "{data_dir}"\n' if data_dir else ""
        (d / NODE_CONFIG_FILE).write_text(
            ("" if consent else 'consent = "off"\n') + "[data]\n"
            f'dataset = "{dataset}"\n{dd}partition = "{partition}"\nalpha = {alpha}\n'
            f"parts = {n}\nindex = {i}\nseed = {seed}\n"
            + ("[policy]\nrequire_secure_aggregation = false\n" if allow_plaintext else "")
        )
        dirs.append(d)
    if consent:
        ds = load_dataset(dataset, Path(data_dir) if data_dir else None, seed=seed)
        the_purpose = (purpose or Purpose("research")).name
        for i, d in enumerate(dirs):
            shard = node_shard(load_node_config(d).data.context(), ds.y_train)
            rows = [
                GrantRow(synthetic_subject(i, int(r)), int(r), (the_purpose,), 0.0) for r in shard
            ]
            with ConsentRegistry(d / CONSENT_FILE) as registry:
                registry.grant_many(rows)
    return dirs


def beacon_group_of(node_ids: list[str], size: int) -> list[str] | None:
    """A simulation's beacon group of `size` members (None: every member): the first by
    SHA-256 of their node ids, so a fixed, arbitrary pick that no index favours. A real
    consortium names its group in `genesis create --beacon-member`."""
    if size <= 0 or size >= len(node_ids):
        return None
    ranked = sorted(node_ids, key=lambda i: hashlib.sha256(b"beacon-group|" + i.encode()).digest())
    return sorted(ranked[:size])


def synthetic_subject(node: int, record_id: int) -> str:
    """The pseudonym of the (synthetic) data subject behind a demo record."""
    return f"subject-{node:02d}-{record_id:05d}"


@dataclass
class Cluster:
    """Node processes started from member folders; kill/restart them to inject faults."""

    dirs: list[Path]
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    #: Each node exits (after a short linger) once the run finishes; without it they serve on
    #: until stopped, so a node restarted late can still catch up from its peers.
    exit_when_finished: bool = True

    def start(self, i: int) -> None:
        log = open(self.dirs[i] / "node.log", "ab")  # noqa: SIM115 - owned by the child
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        self.procs[i] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "consortium.cli.app",
                "node",
                "start",
                "--dir",
                str(self.dirs[i]),
                *(["--exit-when-finished"] if self.exit_when_finished else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def start_all(self) -> None:
        for i in range(len(self.dirs)):
            self.start(i)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.time() + timeout
        for i, d in enumerate(self.dirs):
            while not (d / STATUS_FILE).exists():
                proc = self.procs.get(i)
                if proc is not None and proc.poll() is not None:
                    tail = (d / "node.log").read_text()[-800:]
                    raise ConsortiumError(f"node{i} exited at start:\n{tail}")
                if time.time() > deadline:
                    raise ConsortiumError(f"node{i} did not start within {timeout:.0f} s")
                time.sleep(0.1)

    def kill(self, i: int) -> None:
        proc = self.procs.pop(i, None)
        if proc is not None:
            proc.kill()
            proc.wait()

    def status(self, i: int) -> dict[str, object]:
        try:
            data: dict[str, object] = json.loads((self.dirs[i] / STATUS_FILE).read_text())
            return data
        except (OSError, ValueError):
            return {}

    def alive(self) -> list[int]:
        return [i for i, p in self.procs.items() if p.poll() is None]

    def stop_all(self, grace: float = 30.0) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        deadline = time.time() + grace
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()
