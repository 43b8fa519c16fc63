"""Re-verify a node or run folder from its bytes alone, trusting nothing that was stored derived.

Order of checks (the first problem found is the one reported, named by entry index or CID):
1. entry 0 is a genesis manifest signed by every member (and equals `genesis.json` if present);
2. every entry decodes canonically and carries valid member signatures, made for this consortium
   (over its genesis digest);
3. the Merkle root is recomputed from the entry bytes (stored leaf hashes and tree rows are not
   trusted) and every stored tree head's root must equal it at that size; every stored cosignature
   must be valid, and a head with at least a quorum of them is final;
4. the stored tree agrees with the entries (so proofs served to peers are honest);
5. every CID an entry references is resolved and re-hashed, recursively, and every block in the
   store re-hashes to its CID;
6. recorded equivocation evidence is reported.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multiformats import CID

from consortium.audit.entries_check import CHUNK, check_all
from consortium.chain.check import check_anchored, check_deployment
from consortium.chain.client import RECORD_FILE, AnchorChain, AnchoredHead
from consortium.core.encoding import Domain, sha256
from consortium.core.errors import AuditError, ConfigError, ConsortiumError
from consortium.core.genesis import GENESIS_FILE, Genesis
from consortium.core.layout import CHAIN_DIR, LEDGER_FILE, STORE_DIR
from consortium.ledger.entries import Entry, check_signature, genesis_from_entry
from consortium.ledger.frontier import Frontier
from consortium.ledger.heads import TreeHead
from consortium.ledger.log import Ledger
from consortium.node.anchoring import CHAIN_CONFIG_FILE, ChainConfig, load_chain_config
from consortium.node.config import RunConfig, consortium_refusals
from consortium.privacy.budget import Budget, recompute_totals, totals
from consortium.protocol.privacy_round import RoundPrivacy, client_noise_multiplier
from consortium.protocol.record import (
    ROUND_KIND,
    RUN_KIND,
    STOP_KIND,
    RoundRecord,
    RunRecord,
    StopRecord,
)
from consortium.protocol.secagg import SecAggParams
from consortium.protocol.secure_round import Consortium, round_params
from consortium.protocol.verifier import CONFIG, RecordContext, verify_round_record
from consortium.store.blockstore import BlockStore
from consortium.store.cid import cid_for
from consortium.store.objects import get_bytes, walk

Progress = Callable[[str, int, int], None]


@dataclass
class AuditReport:
    consortium: str = ""
    members: int = 0
    quorum: int = 0
    entries: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    heads: int = 0
    final_heads: int = 0
    latest_final_size: int = 0
    root: bytes = b""
    artifacts: int = 0
    blocks: int = 0
    equivocations: list[str] = field(default_factory=list)
    anchored: int = 0
    latest_anchored_size: int = 0
    secure_rounds: int = 0
    privacy: dict[str, dict[str, float]] = field(default_factory=dict)  # purpose -> totals
    extra: dict[str, str] = field(default_factory=dict)


def _fail(message: str) -> AuditError:
    return AuditError(f"audit failed: {message}")


def audit(
    directory: Path,
    progress: Progress | None = None,
    workers: int | None = None,
    *,
    chain_url: str | None = None,
    contract: str | None = None,
) -> AuditReport:
    """Audit `directory` (a node or run folder); raise AuditError naming the first problem.

    Signatures are checked on `workers` processes (default: every core). Anchored heads are read
    from the chain at `chain_url`/`contract`, else the folder's chain.toml, else its embedded
    chain."""
    try:
        return _audit(Path(directory), progress, workers, chain_url, contract)
    except sqlite3.Error as exc:  # a damaged database file is tampering too, never a traceback
        raise _fail(f"ledger database is damaged: {exc}") from exc


def _audit(
    directory: Path,
    progress: Progress | None,
    workers: int | None,
    chain_url: str | None,
    contract: str | None,
) -> AuditReport:
    directory = Path(directory)
    ledger_path = directory / LEDGER_FILE
    if not ledger_path.exists():
        raise AuditError(f"no ledger at {ledger_path}: is {directory} a node or run folder?")
    report = AuditReport()
    try:
        ledger = Ledger.open(ledger_path)
    except ConsortiumError as exc:
        raise _fail(f"cannot open ledger: {exc}") from exc
    with ledger:
        genesis = _check_genesis(directory, ledger, report)
        anchored = _read_chain(directory, genesis, report, chain_url, contract)
        references, roots = _check_entries(
            ledger, genesis, report, progress, workers, {h.size for h in anchored}
        )
        _check_anchors(anchored, roots, report)
        _check_heads(ledger, genesis, roots, report)
        try:
            ledger.fsck()
        except ConsortiumError as exc:
            raise _fail(f"stored Merkle tree: {exc}") from exc
        for blob in ledger.raw_equivocations():
            report.equivocations.append(blob.hex()[:32])
    _check_store(directory / STORE_DIR, references, report, progress)
    if report.kinds.get("round") or report.kinds.get(RUN_KIND) or report.kinds.get(STOP_KIND):
        _check_round_records(ledger_path, directory / STORE_DIR, genesis, report)
    if report.equivocations:
        raise _fail(f"{len(report.equivocations)} equivocation(s) by members are on record")
    return report


def _check_genesis(directory: Path, ledger: Ledger, report: AuditReport) -> Genesis:
    first = next(ledger.raw_entries(0, 1), None)
    if first is None:
        raise _fail("entry 0: the ledger is empty")
    try:
        genesis = genesis_from_entry(Entry.from_bytes(first[1]))
    except ConsortiumError as exc:
        raise _fail(f"entry 0: {exc}") from exc
    local = directory / GENESIS_FILE
    if local.exists():
        try:
            on_disk = Genesis.load(local)
        except ConsortiumError as exc:
            raise _fail(f"{GENESIS_FILE}: {exc}") from exc
        if on_disk.digest() != genesis.digest():
            raise _fail(f"{GENESIS_FILE} differs from the manifest in ledger entry 0")
    report.consortium = genesis.consortium
    report.members = len(genesis.members)
    report.quorum = genesis.quorum
    return genesis


def _check_entries(
    ledger: Ledger,
    genesis: Genesis,
    report: AuditReport,
    progress: Progress | None,
    workers: int | None,
    anchored_sizes: set[int],
) -> tuple[dict[str, int], dict[int, bytes]]:
    """Verify every entry; return the CIDs referenced (-> first entry) and the recomputed root
    at every size a stored head claims."""
    wanted = {size for size, *_ in ledger.raw_cosignatures()}
    wanted |= {size for size, *_ in ledger.raw_heads()}
    wanted |= anchored_sizes
    rows = list(ledger.raw_entries())
    total = ledger.size
    for expected, (idx, _) in enumerate(rows):
        if idx != expected:
            raise _fail(f"entry {expected}: missing")
    if len(rows) != total:
        raise _fail(f"entry {len(rows)}: missing (ledger claims {total} entries)")
    first = Entry.from_bytes(rows[0][1])  # entry 0 was verified as the genesis manifest
    report.kinds = {first.kind: 1}
    references: dict[str, int] = {}
    frontier = Frontier.empty().append(rows[0][1])
    roots: dict[int, bytes] = {0: Frontier.empty().root(), 1: frontier.root()}
    keys = {m.node_id: m.public_key for m in genesis.members}
    chunks = [rows[i : i + CHUNK] for i in range(1, len(rows), CHUNK)]
    for n, result in enumerate(check_all(chunks, keys, genesis.digest(), workers)):
        if result.error is not None:
            raise _fail(f"entry {result.error[0]}: {result.error[1]}")
        for kind, count in result.kinds.items():
            report.kinds[kind] = report.kinds.get(kind, 0) + count
        for cid, idx in result.references:
            references.setdefault(cid, idx)
        for leaf in result.leaf_hashes:
            frontier = frontier.append_hash(leaf)
            if frontier.size in wanted:
                roots[frontier.size] = frontier.root()
        if progress:
            progress("entries", min(total, (n + 1) * CHUNK), total)
    report.entries = total
    report.root = frontier.root()
    return references, roots


def _chain_target(
    directory: Path, chain_url: str | None, contract: str | None
) -> ChainConfig | None:
    """The external chain to check: explicit options over the folder's chain.toml; None means
    the folder's embedded chain."""
    config = load_chain_config(directory)
    if chain_url is None and contract is None:
        return config
    url = chain_url or (config.url if config else None)
    address = contract or (config.contract if config else None)
    if url is None or address is None:
        missing = "--contract" if address is None else "--chain-url"
        raise ConfigError(f"checking an external chain needs {missing} (or a {CHAIN_CONFIG_FILE})")
    return ChainConfig.of(url, address)


def _read_chain(
    directory: Path,
    genesis: Genesis,
    report: AuditReport,
    chain_url: str | None = None,
    contract: str | None = None,
) -> list[AnchoredHead]:
    """The heads anchored on the consortium's chain (chain.toml or explicit options) or else on
    the folder's embedded chain, after checking the contract is ours (code, genesis, members)."""
    target = _chain_target(directory, chain_url, contract)
    chain_dir = directory / CHAIN_DIR
    if target is None and not (chain_dir / RECORD_FILE).exists():
        return []
    try:
        if target is None:
            opened = AnchorChain.embedded(chain_dir, readonly=True)
        else:
            opened = AnchorChain.connect(target.url, target.contract)
        with opened as chain:
            if chain.contract_address is None:
                return []
            problems = check_deployment(
                chain.members(),
                chain.genesis_digest(),
                chain.code_matches(),
                [m.evm_address for m in genesis.members if m.evm_address],
                genesis.digest(),
            )
            heads = chain.anchored_heads()
            report.extra["chain"] = f"{chain.description} contract {chain.contract_address}"
    except ConsortiumError as exc:
        raise _fail(f"chain: {exc}") from exc
    if problems:
        raise _fail(f"chain: {problems[0]}")
    return heads


def _check_anchors(
    anchored: list[AnchoredHead], roots: dict[int, bytes], report: AuditReport
) -> None:
    """Every anchored head must be a prefix of the entries as they are now."""
    size = max(roots)
    # The roots are recomputed from the entries, so a matching anchored root at size s already
    # proves the local history extends it: no separate consistency proof is needed.
    problems = check_anchored(anchored, size, lambda s: roots[s], lambda _a, _b: True)
    if problems:
        raise _fail(f"chain: {problems[0]}")
    report.anchored = len(anchored)
    report.latest_anchored_size = max((h.size for h in anchored), default=0)


def _check_round_records(
    ledger_path: Path, store_dir: Path, genesis: Genesis, report: AuditReport
) -> None:
    """Run `verify_round_record`, the check every voter ran before cosigning, on every stored
    round record: leader of its attempt, members, contributors, the model recomputed from the
    published SecAgg+ transcript, the privacy spend recomputed from the ledger, consent shape.
    Then recompute every purpose's privacy totals."""
    store: BlockStore | None = None
    runs: dict[str, RunConfig] = {}
    stopped: set[str] = set()
    spends: dict[str, list[tuple[int, Any]]] = {}
    frontier = Frontier.empty()
    with Ledger.open(ledger_path) as ledger:
        for idx, data in ledger.raw_entries():
            start_root, frontier = frontier.root(), frontier.append(data)
            entry = Entry.from_bytes(data)
            if entry.kind in (RUN_KIND, STOP_KIND):
                try:
                    if entry.kind == RUN_KIND:
                        _agreed_run(entry, genesis, runs)
                    else:
                        stopped.add(_run_of_stop(entry, runs))
                except ConsortiumError as exc:
                    raise _fail(f"entry {idx}: {exc}") from exc
                continue
            if entry.kind != ROUND_KIND:
                continue
            try:
                store = store or BlockStore(store_dir, create=False)
                record = RoundRecord.from_entry(entry)
                run = _run_of(record, runs)
                if record.run in stopped:
                    raise ConsortiumError(
                        f"a round of run {record.run} after the members agreed to stop it "
                        f"[rule {CONFIG}]"
                    )
                privacy = _round_privacy(genesis, run, spends)
                context = _record_context(
                    record, run, entry, idx, start_root, genesis, store, privacy
                )
                verify_round_record(record, context)
            except ConsortiumError as exc:
                raise _fail(f"entry {idx}: {exc}") from exc
            if record.privacy is not None:
                spends.setdefault(run.purpose, []).append((idx, record.privacy))
            report.secure_rounds += record.secure
    for purpose, rows in spends.items():
        p = genesis.purpose(purpose)
        problems = recompute_totals(
            [b for _, b in rows], Budget.from_purpose(p.name, p.epsilon, p.delta)
        )
        if problems:
            raise _fail(f"privacy budget of purpose {purpose!r}: {problems[0]}")
        report.privacy[purpose] = totals([b for _, b in rows])


def _agreed_run(entry: Entry, genesis: Genesis, runs: dict[str, RunConfig]) -> None:
    """An agreed run configuration: its hash is its run id and it keeps the consortium's rules."""
    record = RunRecord.from_entry(entry)
    run = RunConfig.from_body(dict(record.config))
    if run.run_id() != record.run:
        raise ConsortiumError(f"the run id is not its configuration's hash [rule {CONFIG}]")
    problems = consortium_refusals(run, genesis)
    if problems:
        raise ConsortiumError(f"run {record.run}: {problems[0]}")
    runs[record.run] = run


def _run_of_stop(entry: Entry, runs: dict[str, RunConfig]) -> str:
    stop = StopRecord.from_entry(entry)
    if stop.run not in runs:
        raise ConsortiumError(f"a stop of run {stop.run}, which no run-config entry agreed")
    return stop.run


def _run_of(record: RoundRecord, runs: dict[str, RunConfig]) -> RunConfig:
    """The agreed configuration a record's run follows (its run-config entry comes first)."""
    if record.run not in runs:
        raise ConsortiumError(
            f"a record of run {record.run}, which no run-config entry agreed [rule {CONFIG}]"
        )
    return runs[record.run]


def _round_privacy(
    genesis: Genesis, run: RunConfig, spends: dict[str, list[tuple[int, Any]]]
) -> RoundPrivacy | None:
    """The privacy state a node builds when the round begins, from the records before it."""
    config = run.privacy
    if config.unit == "none":
        return None
    p = genesis.purpose(run.purpose)
    budget = Budget.from_purpose(p.name, p.epsilon, p.delta)
    budget.check_config(config)
    client_z = client_noise_multiplier(config, run.rounds) if config.client_level else 0.0
    return RoundPrivacy(config, budget, [b for _, b in spends.get(p.name, [])], client_z)


def _record_context(
    record: RoundRecord,
    run: RunConfig,
    entry: Entry,
    idx: int,
    start_root: bytes,
    genesis: Genesis,
    store: BlockStore,
    privacy: RoundPrivacy | None,
) -> RecordContext:
    # Imported here: model arithmetic pulls in the learning stack, needed only for these records.
    from consortium.learning.adapter import flatten
    from consortium.learning.serialize import add_flat_delta, weights_from_bytes

    fetched: dict[bytes, CID] = {}

    def fetch(cid: CID) -> bytes:
        data = get_bytes(store, cid)  # re-hashed against the CID on read
        fetched[sha256(data)] = cid
        return data

    prev, model = fetch(record.prev_model), fetch(record.model)
    transcript = fetch(record.secagg.transcript) if record.secagg is not None else b""
    model_size = int(flatten(weights_from_bytes(prev)).size)
    secure = run.secure_aggregation == "secagg+"
    consortium = Consortium(
        len(genesis.members), genesis.quorum, run.min_honest, run.secagg_corrupt_fraction
    )

    def secagg_params(attempt: int, parts: list[str]) -> SecAggParams:
        return round_params(
            record.run,
            record.round,
            attempt,
            parts,
            model_size,
            run.clip_norm,
            privacy,
            consortium,
        )

    return RecordContext(
        genesis=genesis,
        author=entry.author,
        run_id=run.run_id(),
        round=record.round,
        slot=idx,
        start_root=start_root,
        prev_model=prev,
        model=model,
        # Every CID the verifier asks about is of bytes just read (and re-hashed) from the store.
        cid_of=lambda data: fetched.get(sha256(data)) or cid_for(data),
        secure=secure,
        min_contributors=max(run.min_updates, consortium.floor) if secure else run.min_updates,
        transcript=transcript,
        secagg_params=secagg_params,
        apply_delta=add_flat_delta,
        privacy=privacy,
        colluders=consortium.f,
    )


def _check_heads(
    ledger: Ledger, genesis: Genesis, roots: dict[int, bytes], report: AuditReport
) -> None:
    keys = {m.node_id: m.public_key for m in genesis.members}
    consortium = genesis.digest()
    for size, root, _ in ledger.raw_heads():
        if roots.get(size) != root:
            raise _fail(f"tree head of size {size}: root does not match the entries")
    signers: dict[tuple[int, bytes, int], set[str]] = {}
    for size, root, time, node_id, sig in ledger.raw_cosignatures():
        where = f"tree head of size {size}"
        if size > report.entries:
            raise _fail(f"{where}: the ledger has only {report.entries} entries")
        if roots.get(size) != root:
            raise _fail(f"{where}: root does not match the entries (entry {size - 1} or earlier)")
        if node_id not in keys:
            raise _fail(f"{where}: cosigned by {node_id}, not a member")
        body = TreeHead(size, root, time).body()
        if not check_signature(keys[node_id], Domain.TREE_HEAD, body, sig, consortium):
            raise _fail(f"{where}: invalid cosignature from {genesis.member(node_id).name}")
        signers.setdefault((size, root, time), set()).add(node_id)
    report.heads = len(signers)
    final = [k for k, v in signers.items() if len(v) >= genesis.quorum]
    report.final_heads = len(final)
    report.latest_final_size = max((k[0] for k in final), default=0)


def _check_store(
    store_dir: Path, references: dict[str, int], report: AuditReport, progress: Progress | None
) -> None:
    if not references and not store_dir.exists():
        return
    store = BlockStore(store_dir, create=False) if store_dir.exists() else None
    if store is None:
        first = min(references.items(), key=lambda kv: kv[1])
        raise _fail(f"entry {first[1]} references {first[0]}, but there is no store")
    reached: set[str] = set()
    for n, (cid, idx) in enumerate(sorted(references.items(), key=lambda kv: kv[1])):
        try:
            for sub in walk(store, cid):
                if str(sub) not in reached:
                    reached.add(str(sub))
                    store.get_block(sub)  # re-hashed on read
        except ConsortiumError as exc:
            raise _fail(f"CID {cid} (referenced by entry {idx}): {exc}") from exc
        if progress and n % 100 == 0:
            progress("artifacts", n, len(references))
    report.artifacts = len(references)
    found = store.verify_report()
    if found.corrupt:
        raise _fail(f"CID {found.corrupt[0]}: block bytes do not match the CID")
    if found.stray:
        raise _fail(f"store: stray file {found.stray[0]}")
    report.blocks = found.checked
