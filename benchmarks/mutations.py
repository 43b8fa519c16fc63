"""Mutation check of the round protocol's refusal rules: does each check have a test that needs it?

    PYTHONPATH=src python benchmarks/mutations.py [--only TEXT] [--list] [--timeout SECONDS]

For every refusal check listed below, the script copies the repository's `src/` into a temporary
directory, disables exactly that one check there, and runs the test files that concern the check
against the copy (`PYTHONPATH=<tmp>/src pytest -x -q -p no:cacheprovider ...`, from the repository
root, so `tests/` is the repository's own). A mutant is KILLED when a test fails (the table names
the first one) and SURVIVED when every test passes: then nothing tests that check.

Checks and how each is disabled (found with `ast` at run time, so the script follows the code when
lines move; an unrecognised refusal shape in the verifier stops the script rather than going
unchecked):

- `protocol/verifier.py`: every `_require(cond, RULE, msg)` call (cond -> `True`), and every
  `raise RecordRejected(RULE, ...) from exc` in an exception handler (-> a bare `raise`: the
  underlying error escapes without the rule's name); the proofs-of-evaluation rules (issue 18:
  `testdata-invalid`, `evaluation-invalid`, `own-proof-missing`, and every rule of the run-final
  entry's `verify_final_record` and `final_beacon`) also run `tests/test_zk_ledger.py` (slow);
- `protocol/record.py`, `RoundRecord.from_body`: every `if ...: raise _fail(...)` (test ->
  `False`) and every `raise _fail(...)` in an exception handler (-> `raise`);
- `protocol/round.py`, `RoundMachine`: the transition-table refusal in `on_message`, the
  attempt check of `_on_propose`, every refusal `return` of `_unlock_refusal`, the prior-vote
  checks of `_vote_for`, the vote-report checks of `_check_update` (each `if` test -> `False`),
  and the PersistVote-before-Send order of `_vote_for`'s results (PersistVote moved last);
  for SecAgg+ (issue 11): every refusal of a START in `_on_secagg` (shape, this node left out,
  a second start, [rule participant-floor], the bound set), the words-after-restart refusal of
  `_client_start`, both survivor-set refusals of `_client_on` ([rule one-set-per-attempt],
  [rule one-sum-per-update]) and its PersistSurvivorSet-before-the-answer order (moved last),
  and the filter of `published_metrics` (-> `True`: every local metric leaves the node);
- `protocol/secagg/client.py`, `SecAggClient`: the signature check of relayed neighbour keys,
  the share-commitment check of `receive_shares`, and every refusal of `_check_set` and
  `_check_certificate`; `protocol/secagg/aggregator.py`, `SecAggAggregator`: the key and
  survivor-vote signature checks, the share-commitment shape check, the `min_survivors` floor
  of `finish_inputs`, the quorum of `finish_agreement` and the revealed-share check of
  `receive_unmask`, the signature on a masked input's commitment and the batch check of inputs
  against their commitments (each `if` test -> `False`; a refusal is a `raise` or
  `self._reject(...)`); `protocol/secagg/transcript.py` (issue 15): every refusal of
  `verify_aggregate` (signed commitments and keys, revealed seeds and mask keys, the integer sum
  against the commitments) and the version check of `Transcript.from_body`;
- agreed runs (issue 12): every refusal `if` and wrapped error of `protocol/agreement.py`'s
  `check`, `cosign` and `valid_cosignatures`, and the f lying refusers of `abandoned`
  (`colluders` -> 0); `node/config.py`: the budget-bypass rule and the unknown-purpose refusal
  of `consortium_refusals` (-> `[]`), every policy refusal of `run_refusals`;
  `node/agreement.py`, `RunAgreement` (Node's mixin): the refusals of `_vote_run` (a run in
  progress, a refused run signed as a refusal, a dry run after a vote for another head) and
  `_abandon_run`'s threshold (its check, and `max_faulty(...)` -> 0).

Before any mutant, every test group runs once on an unmutated copy and must pass. Test files that
do not exist are left out of a mutant's run (and the table says so). Exit status: 0 when every
mutant was killed, 1 when one survived, 2 when the baseline failed.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VERIFIER = "consortium/protocol/verifier.py"
RECORD = "consortium/protocol/record.py"
ROUND = "consortium/protocol/round.py"
CLIENT = "consortium/protocol/secagg/client.py"
AGGREGATOR = "consortium/protocol/secagg/aggregator.py"
TRANSCRIPT = "consortium/protocol/secagg/transcript.py"
AGREEMENT = "consortium/protocol/agreement.py"
CONFIG = "consortium/node/config.py"
NODE = "consortium/node/agreement.py"  # the RunAgreement mixin of Node

T_VERIFIER = "tests/test_round_verifier.py"
T_VERIFIER_RULES = "tests/test_round_verifier_rules.py"
T_MACHINE = "tests/test_round_machine.py"
T_MACHINE_RULES = "tests/test_round_machine_rules.py"
T_AUDIT = "tests/test_audit_records.py"
T_PRIVACY_AUDIT = "tests/test_privacy_rounds.py::test_audit_flags_a_tampered_privacy_total"
T_SECAGG = "tests/test_secagg.py"
T_SECAGG_HOSTILE = "tests/test_secagg_hostile.py"
T_DISHONEST = "tests/adversarial/test_secagg_dishonest.py"
T_PUBLISHED = "tests/adversarial/test_secagg_published_sum.py"
T_AGREED = "tests/adversarial/test_agreed_runs.py"
T_STORAGE = "tests/test_storage_rounds.py"
T_COMMITTEE = "tests/test_committees.py"
T_ZK = "tests/test_zk_ledger.py"  # slow: a 3-node run with proofs (issue 18)

#: Test files each mutant runs, fastest first (pytest -x stops at the first failure).
VERIFIER_TESTS = (T_VERIFIER, T_VERIFIER_RULES)
#: Verifier rules that the round-machine and audit tests exercise too.
VERIFIER_EXTRA = {
    "attempt-not-current": (T_MACHINE,),
    "participants-not-members": (T_MACHINE, T_AUDIT),
    "author-not-attempt-leader": (T_AUDIT,),
    "privacy-mismatch": (T_PRIVACY_AUDIT,),
    # Replication (issue 16): a dishonest leader's storage section, and the replicas refusal.
    "storage-commitment-mismatch": (T_STORAGE,),
    "storage-proof-invalid": (T_STORAGE,),
    "own-answer-missing": (T_STORAGE,),
    # Committees (issue 15): a dishonest leader's contributors outside the beacon's committee.
    "participants-not-committee": (T_COMMITTEE,),
    # Proofs of evaluation (issue 18): a dishonest leader, prover or run-final proposer.
    "testdata-invalid": (T_ZK,),
    "evaluation-invalid": (T_ZK,),
    "own-proof-missing": (T_ZK,),
}
#: Verifier functions whose every rule only the proofs-of-evaluation tests exercise.
VERIFIER_ZK_FUNCTIONS = {"verify_final_record", "final_beacon"}
RECORD_TESTS = (T_VERIFIER, T_VERIFIER_RULES)
ROUND_TESTS = (T_MACHINE, T_MACHINE_RULES)
#: The round machine's SecAgg+ checks (issue 11): the dishonest-leader tests run them.
ROUND_SECAGG_TESTS = (T_MACHINE_RULES, T_DISHONEST, T_MACHINE)
SECAGG_TESTS = (T_SECAGG_HOSTILE, T_SECAGG, T_DISHONEST)
#: The published transcript's checks (issue 15): forged transcripts, then the package's tests.
TRANSCRIPT_TESTS = (T_PUBLISHED, T_SECAGG, T_SECAGG_HOSTILE)
AGREED_TESTS = (T_AGREED,)


@dataclass(frozen=True)
class Mutant:
    file: str  # under src/
    line: int
    check: str  # what the check is: function and rule or message
    start: tuple[int, int]  # (line, UTF-8 byte column) of the text replaced
    end: tuple[int, int]
    replacement: str
    how: str  # what the mutation does, in words
    tests: tuple[str, ...]

    def apply(self, source: bytes) -> bytes:
        lines = source.splitlines(keepends=True)
        offsets = [0]
        for line in lines:
            offsets.append(offsets[-1] + len(line))
        a = offsets[self.start[0] - 1] + self.start[1]
        b = offsets[self.end[0] - 1] + self.end[1]
        out = source[:a] + self.replacement.encode() + source[b:]
        if out == source:
            raise AssertionError(f"{self.file}:{self.line}: the mutation changes nothing")
        ast.parse(out)  # a mutant must still be valid Python
        return out


def _span(node: ast.AST) -> tuple[tuple[int, int], tuple[int, int]]:
    end_line, end_col = node.end_lineno, node.end_col_offset  # type: ignore[attr-defined]
    assert end_line is not None and end_col is not None
    return (node.lineno, node.col_offset), (end_line, end_col)  # type: ignore[attr-defined]


def _short(text: str, n: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _message(node: ast.AST) -> str:
    """The first string literal (or f-string) under `node`, for the table."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.JoinedStr):
            return _short(ast.unparse(sub)[2:-1])
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            return _short(sub.value)
    return _short(ast.unparse(node))


def _function(tree: ast.AST, name: str, cls: str | None = None) -> ast.FunctionDef:
    scope: list[ast.stmt] = tree.body  # type: ignore[attr-defined]
    if cls is not None:
        (klass,) = [n for n in scope if isinstance(n, ast.ClassDef) and n.name == cls]
        scope = klass.body
    found = [n for n in scope if isinstance(n, ast.FunctionDef) and n.name == name]
    if len(found) != 1:
        raise SystemExit(f"mutations: cannot find {cls + '.' if cls else ''}{name}")
    return found[0]


def _in_handlers(fn: ast.AST) -> set[int]:
    """ids of the Raise nodes directly in an exception handler of `fn`."""
    return {
        id(stmt)
        for handler in ast.walk(fn)
        if isinstance(handler, ast.ExceptHandler)
        for stmt in handler.body
        if isinstance(stmt, ast.Raise)
    }


def _if_false(file: str, node: ast.If, check: str, tests: tuple[str, ...]) -> Mutant:
    start, end = _span(node.test)
    return Mutant(file, node.lineno, check, start, end, "False", "if-test -> False", tests)


def _reraise(file: str, node: ast.Raise, check: str, tests: tuple[str, ...]) -> Mutant:
    start, end = _span(node)
    return Mutant(file, node.lineno, check, start, end, "raise", "-> bare raise", tests)


def _replace(
    file: str, node: ast.AST, text: str, check: str, how: str, tests: tuple[str, ...]
) -> Mutant:
    start, end = _span(node)
    return Mutant(file, start[0], check, start, end, text, how, tests)


def _reason(stmt: ast.stmt) -> str:
    """The refusal text of a `raise E(..., text)` or `self._reject(node, text)`: its last string
    argument (the first one may be whom a `RejectedMessage` names)."""
    call = stmt.exc if isinstance(stmt, ast.Raise) else getattr(stmt, "value", None)
    if isinstance(call, ast.Call):
        texts = [a for a in call.args if isinstance(a, ast.JoinedStr | ast.Constant)]
        if texts:
            return _message(texts[-1])
    return _message(stmt)


def _refuses(stmt: ast.stmt) -> bool:
    """A raise, or a call of the aggregator's `self._reject(sender, reason)` (which raises)."""
    if isinstance(stmt, ast.Raise):
        return True
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Call)
        and isinstance(stmt.value.func, ast.Attribute)
        and stmt.value.func.attr == "_reject"
    )


def _refusal_ifs(scope: ast.AST, where: str) -> list[ast.If]:
    """Every `if test: <refusal>` (one statement, no else) under `scope`, in source order."""
    found = [
        n
        for n in ast.walk(scope)
        if isinstance(n, ast.If) and not n.orelse and len(n.body) == 1 and _refuses(n.body[0])
    ]
    if not found:
        raise SystemExit(f"mutations: no refusal found in {where}")
    return sorted(found, key=lambda n: (n.lineno, n.col_offset))


def _refusal_if(scope: ast.FunctionDef, text: str) -> ast.If:
    """The one refusal `if` of `scope` whose source contains `text`."""
    found = [n for n in _refusal_ifs(scope, scope.name) if text in ast.unparse(n)]
    if len(found) != 1:
        raise SystemExit(
            f"mutations: {scope.name}: {len(found)} refusals match {text!r}, expected one"
        )
    return found[0]


def _refusal_mutant(file: str, fn: ast.FunctionDef, n: ast.If, tests: tuple[str, ...]) -> Mutant:
    return _if_false(file, n, f"{fn.name}: {_reason(n.body[0])!r}", tests)


def _to_zero(file: str, scope: ast.AST, name: str, check: str, tests: tuple[str, ...]) -> Mutant:
    """The one call of `name(...)` under `scope` or, if there is none, the one read of variable
    `name` -> 0."""
    calls = [n for n in ast.walk(scope) if isinstance(n, ast.Call) and ast.unparse(n.func) == name]
    names = [n for n in ast.walk(scope) if isinstance(n, ast.Name) and n.id == name]
    found = calls or names
    if len(found) != 1:
        raise SystemExit(f"mutations: {check}: {len(found)} uses of {name!r}, expected one")
    what = f"{name}(...)" if calls else name
    return _replace(file, found[0], "0", check, f"{what} -> 0", tests)


# -- protocol/verifier.py -------------------------------------------------------------------------


def verifier_mutants(tree: ast.Module) -> Iterator[Mutant]:
    rules = {
        t.id: n.value.value
        for n in tree.body
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
        for t in n.targets
        if isinstance(t, ast.Name) and isinstance(n.value.value, str)
    }

    def rule_of(arg: ast.expr) -> str:
        if not isinstance(arg, ast.Name) or arg.id not in rules:
            raise SystemExit(f"mutations: verifier.py:{arg.lineno}: rule is not a constant")
        return rules[arg.id]

    def tests(rule: str, fn: str = "") -> tuple[str, ...]:
        extra = VERIFIER_EXTRA.get(rule, ())
        if fn in VERIFIER_ZK_FUNCTIONS and T_ZK not in extra:
            extra = (*extra, T_ZK)
        return VERIFIER_TESTS[:1] + extra + VERIFIER_TESTS[1:]

    for fn in tree.body:
        if not isinstance(fn, ast.FunctionDef) or fn.name == "_require":
            continue
        handled = _in_handlers(fn)
        for node in ast.walk(fn):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_require":
                rule = rule_of(node.args[1])
                start, end = _span(node.args[0])
                check = f"{fn.name}: _require({rule}) {_message(node.args[2])!r}"
                yield Mutant(
                    VERIFIER,
                    node.lineno,
                    check,
                    start,
                    end,
                    "True",
                    "cond -> True",
                    tests(rule, fn.name),
                )
            elif (
                isinstance(node, ast.Raise)
                and isinstance(node.exc, ast.Call)
                and getattr(node.exc.func, "id", None) == "RecordRejected"
            ):
                if id(node) not in handled:
                    raise SystemExit(
                        f"mutations: verifier.py:{node.lineno}: a RecordRejected raised outside "
                        "an exception handler; teach this script how to disable it"
                    )
                rule = rule_of(node.exc.args[0])
                check = f"{fn.name}: raise RecordRejected({rule}) from exc"
                yield _reraise(VERIFIER, node, check, tests(rule, fn.name))


# -- protocol/record.py ---------------------------------------------------------------------------


def record_mutants(tree: ast.Module) -> Iterator[Mutant]:
    fn = _function(tree, "from_body", cls="RoundRecord")
    handled = _in_handlers(fn)
    for node in ast.walk(fn):
        if (
            isinstance(node, ast.If)
            and len(node.body) == 1
            and isinstance(node.body[0], ast.Raise)
            and not node.orelse
        ):
            check = f"from_body: {_message(node.body[0])!r}"
            yield _if_false(RECORD, node, check, RECORD_TESTS)
        elif isinstance(node, ast.Raise) and id(node) in handled:
            yield _reraise(RECORD, node, f"from_body: {_message(node)!r}", RECORD_TESTS)


# -- protocol/round.py ----------------------------------------------------------------------------


def round_mutants(tree: ast.Module) -> Iterator[Mutant]:
    cls = "RoundMachine"

    fn = _function(tree, "on_message", cls)
    (table,) = [
        n
        for n in ast.walk(fn)
        if isinstance(n, ast.If)
        and isinstance(n.test, ast.Compare)
        and isinstance(n.test.ops[0], ast.NotIn)
        and getattr(n.test.comparators[0], "id", None) == "TRANSITIONS"
    ]
    yield _if_false(ROUND, table, "on_message: (phase, event) not in TRANSITIONS", ROUND_TESTS)

    fn = _function(tree, "_on_propose", cls)
    (attempt,) = [
        n for n in ast.walk(fn) if isinstance(n, ast.If) and "attempt-not-current" in ast.unparse(n)
    ]
    yield _if_false(ROUND, attempt, "_on_propose: [rule attempt-not-current]", ROUND_TESTS)

    fn = _function(tree, "_unlock_refusal", cls)
    refusals = [
        n
        for n in ast.walk(fn)
        if isinstance(n, ast.If)
        and isinstance(n.body[-1], ast.Return)
        and n.body[-1].value is not None
        and not (isinstance(n.body[-1].value, ast.Constant) and n.body[-1].value.value is None)
    ]
    if not refusals:
        raise SystemExit("mutations: no refusal found in _unlock_refusal")
    for n in refusals:
        yield _if_false(ROUND, n, f"_unlock_refusal: {_message(n.body[-1])!r}", ROUND_TESTS)

    fn = _function(tree, "_vote_for", cls)
    prior_checks = [
        n
        for n in ast.walk(fn)
        if isinstance(n, ast.If) and re.search(r"\b(prior|why)\b", ast.unparse(n.test))
    ]
    if len(prior_checks) != 2:
        raise SystemExit("mutations: _vote_for's prior-vote checks are not the two expected")
    for n in prior_checks:
        check = f"_vote_for: if {_short(ast.unparse(n.test), 40)}"
        yield _if_false(ROUND, n, check, ROUND_TESTS)
    orders = [
        n
        for n in ast.walk(fn)
        if isinstance(n, ast.Return)
        and isinstance(n.value, ast.List)
        and getattr(n.value.elts[0], "id", None) == "persist"
    ]
    if not orders:
        raise SystemExit("mutations: no [persist, ...] result found in _vote_for")
    for ret in orders:
        assert isinstance(ret, ast.Return) and isinstance(ret.value, ast.List)
        elts = ret.value.elts
        swapped = "[" + ", ".join(ast.unparse(e) for e in [*elts[1:], elts[0]]) + "]"
        start, end = _span(ret.value)
        check = f"_vote_for: PersistVote before {_short(ast.unparse(elts[1]), 30)}"
        yield Mutant(
            ROUND, ret.lineno, check, start, end, swapped, "persist moved last", ROUND_TESTS
        )

    fn = _function(tree, "_check_update", cls)
    (reports,) = [
        n for n in ast.walk(fn) if isinstance(n, ast.If) and ast.unparse(n.test) == "r is not None"
    ]
    for stmt in reports.body:
        if isinstance(stmt, ast.If):
            check = f"_check_update: {_message(stmt.body[-1])!r}"
            yield _if_false(ROUND, stmt, check, ROUND_TESTS)


def round_secagg_mutants(tree: ast.Module) -> Iterator[Mutant]:
    """The round machine's SecAgg+ checks (issue 11)."""
    cls, tests = "RoundMachine", ROUND_SECAGG_TESTS

    fn = _function(tree, "_on_secagg", cls)
    (start,) = [
        n
        for n in ast.walk(fn)
        if isinstance(n, ast.If) and ast.unparse(n.test) == "START in msg.body"
    ]
    for n in _refusal_ifs(start, "_on_secagg's START block"):
        yield _refusal_mutant(ROUND, fn, n, tests)

    fn = _function(tree, "_client_start", cls)
    yield _refusal_mutant(ROUND, fn, _refusal_if(fn, "cannot reproduce"), tests)

    fn = _function(tree, "_client_on", cls)
    for n in _refusal_ifs(fn, "_client_on"):
        yield _refusal_mutant(ROUND, fn, n, tests)
    orders = [
        n.value.body
        for n in ast.walk(fn)
        if isinstance(n, ast.Return)
        and isinstance(n.value, ast.IfExp)
        and isinstance(n.value.body, ast.List)
        and ast.unparse(n.value.body.elts[0]) == "*before"
    ]
    if len(orders) != 1:
        raise SystemExit("mutations: no [*before, ...] result found in _client_on")
    elts = orders[0].elts
    swapped = "[" + ", ".join(ast.unparse(e) for e in [*elts[1:], elts[0]]) + "]"
    check = "_client_on: PersistSurvivorSet before the answer leaves"
    yield _replace(ROUND, orders[0], swapped, check, "persist moved last", tests)

    fn = _function(tree, "published_metrics")
    comps = [n for n in ast.walk(fn) if isinstance(n, ast.DictComp)]
    if len(comps) != 1 or len(comps[0].generators[0].ifs) != 1:
        raise SystemExit("mutations: published_metrics is not one filtered dict comprehension")
    cond = comps[0].generators[0].ifs[0]
    check = f"published_metrics: if {ast.unparse(cond)}"
    yield _replace(ROUND, cond, "True", check, "filter -> True", ROUND_TESTS)


# -- protocol/secagg/client.py and aggregator.py ---------------------------------------------------


def client_mutants(tree: ast.Module) -> Iterator[Mutant]:
    cls = "SecAggClient"
    fn = _function(tree, "receive_neighbour_keys", cls)
    yield _refusal_mutant(CLIENT, fn, _refusal_if(fn, "did not sign"), SECAGG_TESTS)
    fn = _function(tree, "receive_shares", cls)
    yield _refusal_mutant(CLIENT, fn, _refusal_if(fn, "share commitments"), SECAGG_TESTS)
    for name in ("_check_set", "_check_certificate"):
        fn = _function(tree, name, cls)
        for n in _refusal_ifs(fn, name):
            yield _refusal_mutant(CLIENT, fn, n, SECAGG_TESTS)


def aggregator_mutants(tree: ast.Module) -> Iterator[Mutant]:
    cls = "SecAggAggregator"
    for name, text in (
        ("receive_keys", "self._verify"),
        ("receive_shares", "share commitments"),
        ("finish_inputs", "min_survivors"),
        ("receive_survivor_vote", "self._verify"),
        ("finish_agreement", "quorum"),
        ("receive_unmask", "it was not dealt"),
        ("receive_masked_input", "self._verify"),
    ):
        fn = _function(tree, name, cls)
        yield _refusal_mutant(AGGREGATOR, fn, _refusal_if(fn, text), SECAGG_TESTS)
    # The batch check of inputs against their signed commitments drops a liar inside a `with`.
    fn = _function(tree, "_check_commitments", cls)
    (liar,) = [
        n for n in ast.walk(fn) if isinstance(n, ast.If) and "commit(" in ast.unparse(n.test)
    ]
    check = "_check_commitments: 'masked input does not match its signed commitment'"
    yield _if_false(AGGREGATOR, liar, check, SECAGG_TESTS)


def transcript_mutants(tree: ast.Module) -> Iterator[Mutant]:
    fn = _function(tree, "verify_aggregate")
    for n in _refusal_ifs(fn, "verify_aggregate"):
        yield _refusal_mutant(TRANSCRIPT, fn, n, TRANSCRIPT_TESTS)
    fn = _function(tree, "from_body", "Transcript")
    yield _refusal_mutant(TRANSCRIPT, fn, _refusal_if(fn, "VERSION"), TRANSCRIPT_TESTS)


# -- agreed runs: protocol/agreement.py, node/config.py, node/agreement.py ------------------------


def agreement_mutants(tree: ast.Module) -> Iterator[Mutant]:
    for name in ("check", "cosign", "valid_cosignatures"):
        fn = _function(tree, name)
        for n in _refusal_ifs(fn, name):
            yield _refusal_mutant(AGREEMENT, fn, n, AGREED_TESTS)
        for n in ast.walk(fn):
            if isinstance(n, ast.Raise) and id(n) in _in_handlers(fn):
                yield _reraise(AGREEMENT, n, f"{name}: {_reason(n)!r} from exc", AGREED_TESTS)
    fn = _function(tree, "abandoned")
    check = "abandoned: refusals must leave quorum out of reach with f lying refusers"
    yield _to_zero(AGREEMENT, fn, "colluders", check, AGREED_TESTS)


def config_mutants(tree: ast.Module) -> Iterator[Mutant]:
    fn = _function(tree, "consortium_refusals")
    refusals = [
        n
        for n in ast.walk(fn)
        if isinstance(n, ast.If)
        and isinstance(n.body[-1], ast.Return)
        and isinstance(n.body[-1].value, ast.List)
        and n.body[-1].value.elts
    ]
    if not refusals:
        raise SystemExit("mutations: no refusal found in consortium_refusals")
    for n in refusals:
        check = f"consortium_refusals: {_message(n.body[-1])!r}"
        yield _if_false(CONFIG, n, check, (*AGREED_TESTS, T_STORAGE))
    for handler in ast.walk(fn):
        if isinstance(handler, ast.ExceptHandler):
            for stmt in handler.body:
                if isinstance(stmt, ast.Return) and isinstance(stmt.value, ast.List):
                    check = "consortium_refusals: an unknown purpose is refused"
                    yield _replace(CONFIG, stmt.value, "[]", check, "refusal -> []", AGREED_TESTS)
    fn = _function(tree, "run_refusals")
    appends = [
        n
        for n in ast.walk(fn)
        if isinstance(n, ast.If)
        and len(n.body) == 1
        and isinstance(n.body[0], ast.Expr)
        and ast.unparse(n.body[0]).startswith("out.append(")
    ]
    if not appends:
        raise SystemExit("mutations: no policy refusal found in run_refusals")
    for n in appends:
        yield _if_false(CONFIG, n, f"run_refusals: {_message(n.body[0])!r}", AGREED_TESTS)


def node_mutants(tree: ast.Module) -> Iterator[Mutant]:
    cls = "RunAgreement"
    fn = _function(tree, "_vote_run", cls)
    for n in _refusal_ifs(fn, "_vote_run"):
        yield _refusal_mutant(NODE, fn, n, AGREED_TESTS)
    (refused,) = [
        n for n in ast.walk(fn) if isinstance(n, ast.If) and ast.unparse(n.test) == "refusals"
    ]
    check = "_vote_run: if refusals (sign a refusal, not the head)"
    yield _if_false(NODE, refused, check, AGREED_TESTS)
    fn = _function(tree, "_abandon_run", cls)
    yield _refusal_mutant(NODE, fn, _refusal_if(fn, "abandoned"), AGREED_TESTS)
    check = "_abandon_run: f lying refusers allowed for"
    yield _to_zero(NODE, fn, "max_faulty", check, AGREED_TESTS)


FINDERS = {
    VERIFIER: [verifier_mutants],
    RECORD: [record_mutants],
    ROUND: [round_mutants, round_secagg_mutants],
    CLIENT: [client_mutants],
    AGGREGATOR: [aggregator_mutants],
    TRANSCRIPT: [transcript_mutants],
    AGREEMENT: [agreement_mutants],
    CONFIG: [config_mutants],
    NODE: [node_mutants],
}


def all_mutants(src: Path) -> list[Mutant]:
    out: list[Mutant] = []
    for file, finders in FINDERS.items():
        tree = ast.parse((src / file).read_bytes())
        out += sorted((m for f in finders for m in f(tree)), key=lambda m: m.start)
    return out


# -- running --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    status: str  # "KILLED" | "SURVIVED" | "ERROR"
    detail: str
    seconds: float


def _existing(tests: tuple[str, ...]) -> tuple[list[str], list[str]]:
    have = [t for t in tests if (ROOT / t.split("::")[0]).exists()]
    return have, [t for t in tests if t not in have]


def run_tests(src_copy: Path, tests: list[str], timeout: float) -> Outcome:
    env = {
        **os.environ,
        "PYTHONPATH": str(src_copy),
        "PYTHONDONTWRITEBYTECODE": "1",
        "COLUMNS": "1000",  # pytest's summary lines carry the failure's first line in full
    }
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return Outcome("KILLED", f"timeout after {timeout:.0f} s", time.monotonic() - t0)
    seconds = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    if proc.returncode == 0:
        return Outcome("SURVIVED", "all passed", seconds)
    # A parametrized test's id may hold spaces: it runs up to " - " (the reason) or the line's
    # end. Captured log lines ("ERROR    logger:file.py:1 ...") have more than one space.
    failed = re.findall(r"^(?:FAILED|ERROR) (\S.*?)(?: - (.*))?$", out, re.MULTILINE)
    if proc.returncode == 1 and failed:
        test, why = failed[0]
        return Outcome("KILLED", f"{test} ({_short(why, 70)})" if why else test, seconds)
    tail = _short(out.strip().splitlines()[-1] if out.strip() else "no output", 80)
    return Outcome("ERROR", f"pytest exit {proc.returncode}: {tail}", seconds)


def fresh_copy(tmp: Path, name: str) -> Path:
    dest = tmp / name / "src"
    shutil.copytree(ROOT / "src", dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def check_isolation(src_copy: Path) -> None:
    """The tests must import the copy, not the repository (or an installed) `consortium`."""
    env = {**os.environ, "PYTHONPATH": str(src_copy), "PYTHONDONTWRITEBYTECODE": "1"}
    where = subprocess.run(
        [sys.executable, "-c", "import consortium; print(consortium.__file__)"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(where).resolve().is_relative_to(src_copy.resolve()):
        raise SystemExit(f"mutations: tests would import {where}, not the mutated copy")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="run only mutants whose file:line or check contains this")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant run")
    args = ap.parse_args()

    mutants = all_mutants(ROOT / "src")
    if args.only:
        mutants = [m for m in mutants if args.only in f"{m.file}:{m.line} {m.check}"]
    if args.list:
        for m in mutants:
            print(f"{Path(m.file).name}:{m.line}  {m.check}  [{m.how}]  {' '.join(m.tests)}")
        return 0

    results: list[tuple[Mutant, Outcome, list[str]]] = []
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="consortium-mutants-") as tmpdir:
        tmp = Path(tmpdir)
        base = fresh_copy(tmp, "baseline")
        check_isolation(base)
        for group in sorted({m.tests for m in mutants}):
            have, _ = _existing(group)
            outcome = run_tests(base, have, args.timeout)
            passed = outcome.status == "SURVIVED"  # "survived": every test passed
            print(f"baseline {' '.join(have)}: {'passed' if passed else 'FAILED'}")
            if not passed:
                print(f"mutations: baseline fails: {outcome.detail}", file=sys.stderr)
                return 2
        for k, m in enumerate(mutants, 1):
            copy = fresh_copy(tmp, f"m{k}")
            target = copy / m.file
            target.write_bytes(m.apply(target.read_bytes()))
            have, missing = _existing(m.tests)
            outcome = run_tests(copy, have, args.timeout)
            shutil.rmtree(copy.parent)
            results.append((m, outcome, missing))
            print(
                f"[{k}/{len(mutants)}] {Path(m.file).name}:{m.line} {outcome.status} "
                f"{outcome.detail} ({outcome.seconds:.1f} s)",
                flush=True,
            )

    print()
    print("| # | check (file:line) | mutation | result | killed by / note |")
    print("|---|---|---|---|---|")
    for k, (m, o, missing) in enumerate(results, 1):
        note = o.detail if o.status != "SURVIVED" else "no test fails without this check"
        if missing:
            note += f" (not present: {', '.join(missing)})"
        where = f"{Path(m.file).name}:{m.line}"
        print(f"| {k} | `{where}` {m.check.replace('|', '/')} | {m.how} | {o.status} | {note} |")
    survived = [m for m, o, _ in results if o.status == "SURVIVED"]
    errors = [m for m, o, _ in results if o.status == "ERROR"]
    print()
    print(
        f"{len(results)} mutants: {len(results) - len(survived) - len(errors)} killed, "
        f"{len(survived)} survived, {len(errors)} errors, in {time.monotonic() - t_start:.0f} s"
    )
    return 1 if survived or errors else 0


if __name__ == "__main__":
    sys.exit(main())
