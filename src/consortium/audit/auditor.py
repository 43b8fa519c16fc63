"""Re-verify a node or run folder from its bytes alone, trusting nothing that was stored derived.

Order of checks (the first problem found is the one reported, as one line naming the file and
the entry index, tree head, CID, event or round):
1. every SQLite file read (ledger, chain record, consent registry) passes SQLite's integrity
   check and has exactly its writer's schema (`audit.database`);
2. entry 0 is a genesis manifest signed by every member; `genesis.json` and `node.pub`, where
   present, say exactly what the manifest says;
3. every entry decodes canonically and carries valid member signatures, made for this consortium
   (over its genesis digest);
4. the Merkle root is recomputed from the entry bytes (stored leaf hashes and tree rows are not
   trusted) and every stored tree head's root must equal it at that size, and every anchored
   head; every stored head must carry cosignatures, every cosignature must be valid, and a head
   with at least a quorum of them is final;
5. the stored tree and leaf hashes agree with the entries (so proofs served to peers are honest);
6. every CID an entry references is resolved and re-hashed, recursively, and every block in the
   store re-hashes to its CID;
7. every round record passes the voters' verifier;
8. the folder's own consent registry agrees with itself and with the consent heads its node
   committed in the round records (`consent.verify`);
9. recorded equivocation evidence is reported;
10. every entry is covered by a final tree head.

Not read, by design: private keys (`node.key`, `tls.key`), the node's local configuration and
status (`node.json`, `node.toml`, `status.json`), the node's record of its own votes (`my_votes`
in the ledger, which only keeps it from voting twice), and the compiled-contract cache under
`chain/` (the auditor compiles the contract itself and compares the deployed code with that).
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from multiformats import CID

from consortium.audit.database import check_database
from consortium.chain.check import check_anchored, check_deployment
from consortium.chain.client import RECORD_FILE, AnchorChain, AnchoredHead
from consortium.chain.txlog import SCHEMA as TXLOG_SCHEMA
from consortium.consent.registry import ConsentRegistry, registry_schema
from consortium.consent.verify import verify_registry
from consortium.core.encoding import Domain, sha256
from consortium.core.errors import AuditError, ConfigError, ConsortiumError, NotFoundError
from consortium.core.genesis import GENESIS_FILE, Genesis
from consortium.core.identity import PUBLIC_FILE, PublicIdentity
from consortium.core.layout import CHAIN_DIR, CONSENT_FILE, LEDGER_FILE, STORE_DIR
from consortium.ledger import merkle
from consortium.ledger.entries import Entry, check_signature, member_keys
from consortium.ledger.heads import TreeHead
from consortium.ledger.log import SCHEMA as LEDGER_SCHEMA
from consortium.ledger.log import Ledger, StoredTree
from consortium.ledger.parallel import Pending, workers_for
from consortium.ledger.stored import CHUNK, check_chunk
from consortium.node.anchoring import CHAIN_CONFIG_FILE, ChainConfig, load_chain_config
from consortium.node.config import RunConfig, consortium_refusals, load_node_config
from consortium.node.evaluations import EvaluationChecker, proof_state
from consortium.privacy.budget import Budget, recompute_totals, totals
from consortium.protocol.privacy_round import RoundPrivacy, client_noise_multiplier
from consortium.protocol.record import (
    FINAL_KIND,
    ROUND_KIND,
    RUN_KIND,
    STOP_KIND,
    Evaluation,
    FinalRecord,
    RoundRecord,
    RunRecord,
    StopRecord,
    run_configs,
)
from consortium.protocol.secagg import SecAggParams
from consortium.protocol.secure_round import Consortium, min_contributors, round_params
from consortium.protocol.storage import StorageState, artifact_name
from consortium.protocol.verifier import (
    CONFIG,
    ProofState,
    RecordContext,
    StorageRules,
    member_name,
    storage_after,
    verify_final_record,
    verify_round_record,
)
from consortium.store.blockstore import BlockStore
from consortium.store.cid import cid_key
from consortium.store.objects import file_cid, get_bytes, walk

Progress = Callable[[str, int, int], None]

#: Kinds whose records the round verifier reads after the pass over the entries.
_RECORD_KINDS = frozenset({ROUND_KIND, RUN_KIND, STOP_KIND, FINAL_KIND})


@dataclass(frozen=True)
class ProvedEvaluation:
    """One proof of evaluation `audit` re-verified: `node` (its name) proved that round
    `round`'s model classifies `correct` of `s` of its committed test records correctly."""

    node: str
    round: int
    s: int
    correct: int
    test_only: bool
    #: A proof of the final model, listed in the run-final entry.
    final: bool = False
    #: What `audit --onchain` needs: the run, the listed proof and model, the node's committed
    #: test-data root and size (from the record's `testdata` section).
    run: str = ""
    proof: str = ""
    model: str = ""
    testdata: tuple[bytes, int] = (b"", 0)

    def line(self) -> str:
        from consortium.zk.srs import TEST_ONLY
        from consortium.zk.testdata import wilson_interval

        lo, hi = wilson_interval(self.correct, self.s)
        what = f"round {self.round}" + (" (the final model)" if self.final else "")
        return (
            f"{self.node}: {what}, s = {self.s}, {self.correct} correct; 95% Wilson "
            f"interval [{lo:.3f}, {hi:.3f}]" + (f"; {TEST_ONLY}" if self.test_only else "")
        )


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
    #: Replication: storage proofs checked, and one line per holder a challenge named missing
    #: (it lost or withheld its copy) and per artifact no holder could prove (lost).
    storage_proofs: int = 0
    storage_missing: list[str] = field(default_factory=list)
    storage_lost: list[str] = field(default_factory=list)
    #: Proofs of evaluation re-verified (issue 18), in ledger order.
    evaluations: list[ProvedEvaluation] = field(default_factory=list)
    extra: dict[str, str] = field(default_factory=dict)


class _Refusal(ConsortiumError):
    """A problem found inside one file of the folder; `_about` names the file."""


def _fail(message: str) -> _Refusal:
    return _Refusal(message)


@contextmanager
def _about(where: str) -> Iterator[None]:
    """Turn any refusal while reading `where` (a file or folder) into one AuditError naming it.

    Untrusted bytes are parsed by typed decoders that raise ConsortiumError subclasses, and a
    damaged SQLite file raises sqlite3.Error from any query: both are tampering here."""
    try:
        yield
    except AuditError:
        raise
    except ConsortiumError as exc:
        raise AuditError(f"audit failed: {where}: {exc}") from exc
    except sqlite3.Error as exc:
        raise AuditError(f"audit failed: {where}: the database is damaged: {exc}") from exc


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
    directory = Path(directory)
    return _audit(directory, progress, workers, _chain_target(directory, chain_url, contract))


def _audit(
    directory: Path, progress: Progress | None, workers: int | None, target: ChainConfig | None
) -> AuditReport:
    ledger_path = directory / LEDGER_FILE
    if not ledger_path.exists():
        raise AuditError(f"no ledger at {ledger_path}: is {directory} a node or run folder?")
    report = AuditReport()
    with _about(LEDGER_FILE):
        check_database(
            ledger_path, LEDGER_SCHEMA, f"{Ledger.VOTES_SCHEMA};\n{Ledger.SECAGG_SCHEMA}"
        )
        ledger = Ledger.open(ledger_path, readonly=True)  # parses entry 0: refusals name it
    with ledger:
        with _about(LEDGER_FILE):
            genesis = ledger.genesis()
        report.consortium = genesis.consortium
        report.members = len(genesis.members)
        report.quorum = genesis.quorum
        _check_json(directory / GENESIS_FILE, genesis.to_json(), "the manifest in ledger entry 0")
        node_id = _check_public_identity(directory, genesis)
        anchored, chain_label = _read_chain(directory, genesis, report, target)
        with _about(LEDGER_FILE):
            checked = _check_entries(
                ledger, genesis, report, progress, workers, {h.size for h in anchored}
            )
            _check_heads(ledger, genesis, checked.roots, report)
        with _about(chain_label):
            _check_anchors(anchored, checked.roots, report)
        with _about(LEDGER_FILE):
            if isinstance(checked.stored, Exception):
                raise checked.stored
            ledger.fsck(checked.levels, checked.stored)
            for blob in ledger.raw_equivocations():
                report.equivocations.append(blob.hex()[:32])
    with _about(STORE_DIR):
        _check_store(
            directory / STORE_DIR,
            checked.references,
            report,
            progress,
            lambda cid: _holders_of(cid, checked.records, genesis),
        )
    rounds: list[tuple[int, RoundRecord]] = []
    if checked.records:
        with _about(LEDGER_FILE):
            rounds = _check_round_records(checked.records, directory / STORE_DIR, genesis, report)
    if (directory / CONSENT_FILE).exists():
        with _about(CONSENT_FILE):
            _check_consent(directory / CONSENT_FILE, node_id, rounds)
    if report.equivocations:
        raise AuditError(
            f"audit failed: {LEDGER_FILE}: {len(report.equivocations)} equivocation(s) by "
            "members are on record"
        )
    if report.entries > 1 and report.latest_final_size < report.entries:
        # Checked last, so a record that breaks a rule is named for that rule first. Entry 0 is
        # final by itself: every member signed it.
        first = max(1, report.latest_final_size)
        raise AuditError(
            f"audit failed: {LEDGER_FILE}: entry {first} and later are not covered by a final "
            f"tree head (a quorum of {genesis.quorum} cosignatures)"
        )
    return report


def _check_json(path: Path, expected: dict[str, Any], what: str) -> None:
    """A JSON file of the folder, where present, must say exactly `expected` (what the ledger
    fixes): any other content is an edit, whatever the file's own loader would accept."""
    if not path.exists():
        return
    with _about(path.name):
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            raise _fail(f"not readable JSON: {exc}") from exc
        if data != expected:
            raise _fail(f"differs from {what}")


def _check_public_identity(directory: Path, genesis: Genesis) -> str | None:
    """The node id of the folder's own node (node.pub), which must be a member as listed."""
    path = directory / PUBLIC_FILE
    if not path.exists():
        return None
    with _about(PUBLIC_FILE):
        node_id = PublicIdentity.load(path).node_id
        member = genesis.member(node_id)
    _check_json(path, member.to_json(), f"member {member.name} in the genesis manifest")
    return node_id


def _check_consent(path: Path, node_id: str | None, rounds: list[tuple[int, RoundRecord]]) -> None:
    """The folder's consent registry against itself and the heads its node committed."""
    if node_id is None:
        raise _fail(f"no {PUBLIC_FILE} says which member's registry this is")
    check_database(path, registry_schema(path))  # format 2's until a writer upgrades it
    committed = {idx: r.consent[node_id] for idx, r in rounds if node_id in r.consent}
    with ConsentRegistry(path, readonly=True) as registry:
        verify_registry(registry, committed)


@dataclass
class _Entries:
    """What the pass over the entries found, for the checks after it."""

    references: dict[str, int]  # CID -> first entry referencing it
    roots: dict[int, bytes]  # recomputed root at every size a stored or anchored head names
    levels: list[list[bytes]]  # `merkle.tree_levels` of the leaves, for `Ledger.fsck`
    stored: StoredTree | Exception  # `Ledger.stored_tree()`, or why it could not be read
    records: list[tuple[int, bytes]]  # (index, bytes) of every run, stop and round record


def _check_entries(
    ledger: Ledger,
    genesis: Genesis,
    report: AuditReport,
    progress: Progress | None,
    workers: int | None,
    anchored_sizes: set[int],
) -> _Entries:
    """Verify every entry (decoded once and hashed once, on every core)."""
    wanted = {size for size, *_ in ledger.raw_cosignatures()}
    wanted |= {size for size, *_ in ledger.raw_heads()}
    wanted |= anchored_sizes
    total = ledger.size
    keys = member_keys(genesis)
    consortium = genesis.digest()
    # Chunks go to the workers as they are read; this process then reads what fsck compares.
    pending = Pending(check_chunk, workers=workers_for(workers), expect_more=total > 1 + CHUNK)
    rows: list[tuple[int, bytes]] = []
    for idx, data in ledger.raw_entries():
        if idx != len(rows):
            raise _fail(f"entry {len(rows)}: missing")
        rows.append((idx, data))
        if idx % CHUNK == 0 and idx:
            pending.add((rows[idx - CHUNK + 1 :], keys, consortium, _RECORD_KINDS))
    if len(rows) != total:
        raise _fail(f"entry {len(rows)}: missing (ledger claims {total} entries)")
    if (len(rows) - 1) % CHUNK:
        pending.add((rows[len(rows) - (len(rows) - 1) % CHUNK :], keys, consortium, _RECORD_KINDS))
    try:  # refused only in fsck's turn, after every check of the entries and heads
        stored: StoredTree | Exception = ledger.stored_tree()
    except (ConsortiumError, sqlite3.Error) as exc:
        stored = exc
    first = Entry.from_bytes(rows[0][1])  # entry 0 was verified as the genesis manifest
    report.kinds = {first.kind: 1}
    references: dict[str, int] = {}
    records: list[tuple[int, bytes]] = []
    leaves = [merkle.leaf_hash(rows[0][1])]
    for n, result in enumerate(pending.results()):
        if result.error is not None:
            raise _fail(f"entry {result.error[0]}: {result.error[1]}")
        for kind, count in result.kinds.items():
            report.kinds[kind] = report.kinds.get(kind, 0) + count
        for cid, idx in result.references:
            references.setdefault(cid, idx)
        records.extend(rows[idx] for idx in result.wanted)
        leaves.extend(result.leaf_hashes)
        if progress:
            progress("entries", min(total, (n + 1) * CHUNK), total)
    levels = merkle.tree_levels(leaves)  # every node hashed once, for the roots and fsck
    roots = {size: merkle.root_at(levels, size) for size in wanted | {0, total} if size <= total}
    report.entries = total
    report.root = roots[total]
    return _Entries(references, roots, levels, stored, records)


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
    directory: Path, genesis: Genesis, report: AuditReport, target: ChainConfig | None
) -> tuple[list[AnchoredHead], str]:
    """The heads anchored on the consortium's chain (chain.toml or explicit options) or else on
    the folder's embedded chain, after checking the contract is ours (code, genesis, members);
    and how to name that chain in a refusal."""
    chain_dir = directory / CHAIN_DIR
    record = chain_dir / RECORD_FILE
    label = f"chain {target.url}" if target else f"{CHAIN_DIR}/{RECORD_FILE}"
    if target is None and not record.exists():
        return [], label
    with _about(label):
        if target is None:
            check_database(record, TXLOG_SCHEMA)
            opened = AnchorChain.embedded(chain_dir, readonly=True)
        else:
            opened = AnchorChain.connect(target.url, target.contract)
        with opened as chain:
            if chain.contract_address is None:
                return [], label
            problems = check_deployment(
                chain.members(),
                chain.genesis_digest(),
                chain.code_matches(),
                [m.evm_address for m in genesis.members if m.evm_address],
                genesis.digest(),
            )
            heads = chain.anchored_heads()
            report.extra["chain"] = f"{chain.description} contract {chain.contract_address}"
        if problems:
            raise _fail(problems[0])
    return heads, label


def _check_anchors(
    anchored: list[AnchoredHead], roots: dict[int, bytes], report: AuditReport
) -> None:
    """Every anchored head must be a prefix of the entries as they are now."""
    size = max(roots)
    # The roots are recomputed from the entries, so a matching anchored root at size s already
    # proves the local history extends it: no separate consistency proof is needed.
    problems = check_anchored(anchored, size, lambda s: roots[s], lambda _a, _b: True)
    if problems:
        raise _fail(problems[0])
    report.anchored = len(anchored)
    report.latest_anchored_size = max((h.size for h in anchored), default=0)


def _check_round_records(
    stored: list[tuple[int, bytes]], store_dir: Path, genesis: Genesis, report: AuditReport
) -> list[tuple[int, RoundRecord]]:
    """Run `verify_round_record`, the check every voter ran before cosigning, on every stored
    round record: leader of its attempt, members, contributors, the model recomputed from the
    published SecAgg+ transcript, the privacy spend recomputed from the ledger, consent shape.
    Then recompute every purpose's privacy totals. `stored`: the bytes of every run, stop and
    round record, as checked (and decoded once already) by the pass over the entries: decoded
    again here because CIDs do not cross process boundaries."""
    store: BlockStore | None = None
    records: list[tuple[int, RoundRecord]] = []
    runs: dict[str, RunConfig] = {}
    stopped: set[str] = set()
    spends: dict[str, list[tuple[int, Any]]] = {}
    storage: dict[str, StorageState] = {}  # run -> what its records committed so far
    proofs = _Proofs(store_dir.parent, genesis)
    names = {m.node_id: m.name for m in genesis.members}

    def proved(run: RunConfig, e: Evaluation, final: bool = False) -> ProvedEvaluation:
        root, size = b"", 0
        for r in proofs.records.get(run.run_id(), []):
            if e.node in r.testdata:
                root, size = r.testdata[e.node].root, r.testdata[e.node].size
                break
        return ProvedEvaluation(
            names.get(e.node, e.node[:16]), e.round, e.s, e.correct, e.test_only, final,
            run.run_id(), cid_key(e.proof), cid_key(e.model), (root, size),
        )  # fmt: skip

    finals: set[str] = set()
    for idx, data in stored:
        entry = Entry.from_bytes(data)  # the bytes the first pass verified
        if entry.kind == FINAL_KIND:
            try:
                store = store or BlockStore(store_dir, create=False)
                final = FinalRecord.from_entry(entry)
                run = _run_of_final(final, runs, finals)
                proof_state_ = proofs.state(run, store)
                proofs.checkers[final.run].note_final(final)
                verify_final_record(
                    final,
                    run_id=final.run,
                    proofs=proof_state_,
                    genesis=genesis,
                    artifacts={
                        cid_key(e.proof): get_bytes(store, e.proof) for e in final.evaluations
                    },
                    cid_of=lambda data: file_cid(data, genesis.unixfs_profile),
                )
            except ConsortiumError as exc:
                raise _fail(f"entry {idx}: {exc}") from exc
            finals.add(final.run)
            report.evaluations += [proved(run, e, final=True) for e in final.evaluations]
            continue
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
            state = storage.get(record.run, StorageState())
            context = _record_context(record, run, entry, idx, genesis, store, privacy, state)
            if run.proofs:
                context = replace(
                    context,
                    proofs=proofs.state(run, store),
                    artifacts={
                        cid_key(e.proof): get_bytes(store, e.proof) for e in record.evaluations
                    },
                )
            verify_round_record(record, context)
            storage[record.run] = storage_after(state, record, genesis)
        except ConsortiumError as exc:
            raise _fail(f"entry {idx}: {exc}") from exc
        if record.storage is not None:
            report.storage_proofs += sum(len(a.proofs) for a in record.storage.answers)
            for artifact, holder in record.storage.missing:
                report.storage_missing.append(
                    f"round {record.round} (entry {idx}): {member_name(genesis, holder)} did "
                    f"not prove it holds {artifact}"
                )
            for artifact in storage[record.run].lost:
                line = f"{artifact}: no holder proved it (lost)"
                if line not in report.storage_lost:
                    report.storage_lost.append(line)
        if run.proofs:
            proofs.add(record)
            report.evaluations += [proved(run, e) for e in record.evaluations]
        if record.privacy is not None:
            spends.setdefault(run.purpose, []).append((idx, record.privacy))
        report.secure_rounds += record.secure
        records.append((idx, record))
    for purpose, rows in spends.items():
        p = genesis.purpose(purpose)
        problems = recompute_totals(
            [b for _, b in rows], Budget.from_purpose(p.name, p.epsilon, p.delta)
        )
        if problems:
            raise _fail(f"privacy budget of purpose {purpose!r}: {problems[0]}")
        report.privacy[purpose] = totals([b for _, b in rows])
    return records


class _Proofs:
    """The proofs of evaluation of the runs audited so far: each run's records in order and
    its checker (EZKL; keys made in a temporary folder: audit writes nothing in the folder).
    The SRS is the folder's node.toml `[zk] srs`, checked against the run's hash."""

    def __init__(self, directory: Path, genesis: Genesis) -> None:
        self.directory, self.genesis = directory, genesis
        self.records: dict[str, list[RoundRecord]] = {}
        self.checkers: dict[str, EvaluationChecker] = {}
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def state(self, run: RunConfig, store: BlockStore) -> ProofState:
        rid = run.run_id()
        records = self.records.setdefault(rid, [])
        if rid not in self.checkers:
            if self._tmp is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="consortium-audit-zk-")
            name = ""
            if (self.directory / PUBLIC_FILE).is_file():
                name = PublicIdentity.load(self.directory / PUBLIC_FILE).name
            self.checkers[rid] = EvaluationChecker(
                run, self.genesis, store, load_node_config(self.directory), name,
                Path(self._tmp.name) / rid,
            )  # fmt: skip
        checker = self.checkers[rid]
        checker.note(records)
        return proof_state(run, records, checker.check)

    def add(self, record: RoundRecord) -> None:
        self.records.setdefault(record.run, []).append(record)


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


def _run_of_final(final: FinalRecord, runs: dict[str, RunConfig], done: set[str]) -> RunConfig:
    """The run a run-final entry closes: agreed, with proofs, not closed before."""
    run = runs.get(final.run)
    if run is None or not run.proofs:
        raise ConsortiumError(
            f"a run-final entry of run {final.run}, which no run-config entry with proofs of "
            f"evaluation agreed [rule {CONFIG}]"
        )
    if final.run in done:
        raise ConsortiumError(f"a second run-final entry of run {final.run} [rule {CONFIG}]")
    return run


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
    genesis: Genesis,
    store: BlockStore,
    privacy: RoundPrivacy | None,
    storage: StorageState,
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
    rules = (
        StorageRules(run.replicas, run.challenge_every, storage, run.challenge_artifacts)
        if run.storage
        else None
    )
    model_size = int(flatten(weights_from_bytes(prev)).size)
    secure = run.secure_aggregation == "secagg+"
    consortium = Consortium.sized(
        len(genesis.members),
        genesis.quorum,
        run.min_honest,
        run.secagg_corrupt_fraction,
        run.committee_size,
    )

    def secagg_params(beacon: bytes, attempt: int, parts: list[str]) -> SecAggParams:
        return round_params(
            record.run,
            record.round,
            beacon,
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
        prev_model=prev,
        model=model,
        # Every CID the verifier asks about is of bytes just read (and re-hashed) from the store.
        cid_of=lambda data: fetched.get(sha256(data)) or file_cid(data, genesis.unixfs_profile),
        secure=secure,
        min_contributors=min_contributors(run.min_updates, secure, consortium),
        transcript=transcript,
        secagg_params=secagg_params,
        apply_delta=add_flat_delta,
        privacy=privacy,
        colluders=consortium.f,
        storage=rules,
        committee=run.committee_size,
    )


def _check_heads(
    ledger: Ledger, genesis: Genesis, roots: dict[int, bytes], report: AuditReport
) -> None:
    keys = {m.node_id: m.public_key for m in genesis.members}
    consortium = genesis.digest()
    heads = list(ledger.raw_heads())
    for size, root, _ in heads:
        if roots.get(size) != root:
            raise _fail(f"tree head of size {size}: root does not match the entries")
    # A head is stored with the cosignatures that made it (one transaction): never alone.
    cosigned = {(size, root, time) for size, root, time, _, _ in ledger.raw_cosignatures()}
    for size, _, time in sorted(set(heads) - cosigned):
        raise _fail(f"tree head of size {size} at time {time}: stored without a cosignature")
    for size, _, time in sorted(cosigned - set(heads)):
        raise _fail(f"tree head of size {size} at time {time}: cosigned, but not stored")
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


def _holders_of(cid: str, records: list[tuple[int, bytes]], genesis: Genesis) -> list[str]:
    """The members the round records last committed as holders of artifact `cid` (names), for
    a folder that lacks it: with replicas < n, other members' folders hold it."""
    try:
        name = artifact_name(cid)
    except ConsortiumError:
        return []
    holders: list[str] = []
    for _, data in records:
        try:
            entry = Entry.from_bytes(data)
            if entry.kind != ROUND_KIND:
                continue
            section = RoundRecord.from_entry(entry).storage
        except ConsortiumError:
            continue  # the record pass names it
        for c in section.commitments if section is not None else ():
            if c.artifact == name:
                holders = [member_name(genesis, h) for h in c.holders]
    return holders


def _check_store(
    store_dir: Path,
    references: dict[str, int],
    report: AuditReport,
    progress: Progress | None,
    holders_of: Callable[[str], list[str]] = lambda _cid: [],
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
        except NotFoundError as exc:
            holders = holders_of(cid)
            if not holders:
                raise _fail(f"CID {cid} (referenced by entry {idx}): {exc}") from exc
            raise _fail(
                f"CID {cid} (referenced by entry {idx}) is not in this folder; the run keeps it "
                f"at {', '.join(holders)} (replicas < members): import one holder's copy "
                "with `consortium store export THEIR_DIR --held --car FILE` and "
                f"`consortium store import FILE --dir {store_dir.parent}`, then audit again"
            ) from exc
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


@dataclass(frozen=True)
class OnChainCheck:
    """One listed proof checked by `audit --onchain`: accepted (`gas` of the verifyEvaluation
    call) or refused (`refusal`, naming the rule)."""

    evaluation: ProvedEvaluation
    gas: int | None
    refusal: str = ""

    def line(self) -> str:
        ev = self.evaluation
        what = f"{ev.node}: round {ev.round}" + (" (the final model)" if ev.final else "")
        if self.gas is not None:
            return f"{what}: on chain: accepted ({self.gas:,} gas)"
        return f"{what}: on chain: REFUSED: {self.refusal}"


def check_onchain(
    directory: Path, evaluations: list[ProvedEvaluation], *, solcjs: Path | None = None
) -> list[OnChainCheck]:
    """Check every proof `audit` re-verified on this process's embedded chain
    (`zk.evm.check_on_chain`: EZKL's verifier contract behind the wrapper that binds the weight
    commitment, recomputed here from the model at the listed CID, and the node's committed
    test-data root and size, from the record's `testdata` section). Contracts are compiled once
    per run's circuit and SRS, in a temporary folder (audit writes nothing in the folder). A
    ZkError (`not-installed`) if solc-js is missing; each proof's refusal is reported, not
    raised."""
    from consortium.zk.evm import find_solcjs

    solcjs = solcjs or find_solcjs()
    directory = Path(directory)
    genesis = Genesis.load(directory / GENESIS_FILE)
    store = BlockStore(directory / STORE_DIR, create=False)
    with Ledger.open(directory / LEDGER_FILE, readonly=True) as ledger:
        agreed = run_configs(enumerate(ledger.iter_entries()))
    runs = {r.run: RunConfig.from_body(dict(r.config)) for _, r in agreed}
    config = load_node_config(directory)
    name = ""
    if (directory / PUBLIC_FILE).is_file():
        name = PublicIdentity.load(directory / PUBLIC_FILE).name
    out: list[OnChainCheck] = []
    with tempfile.TemporaryDirectory(prefix="consortium-audit-evm-") as tmp:
        checkers: dict[str, EvaluationChecker] = {}
        for ev in evaluations:
            try:
                if ev.run not in runs:
                    raise ConsortiumError(f"no run-config entry of run {ev.run}")
                checker = checkers.get(ev.run)
                if checker is None:
                    keys = Path(tmp) / ev.run / "keys"
                    checker = EvaluationChecker(runs[ev.run], genesis, store, config, name, keys)
                    checkers[ev.run] = checker
                found = checker.on_chain(
                    ev.proof, ev.model, ev.testdata, Path(tmp) / ev.run / "evm", solcjs
                )
                out.append(OnChainCheck(ev, found.verify_gas))
            except ConsortiumError as exc:
                out.append(OnChainCheck(ev, None, str(exc)))
    return out
