"""Proofs of evaluation: what one costs, per model and sample size s.

    consortium bench zk [--cases digits/logreg,digits/mlp,fashion-mnist/mlp] [--sizes 1,8]
                        [--max-logrows 17] [--json] [--out FILE]

Per (dataset/model, s), in a child process of its own (so the peak memory is that case's, read
with os.wait4's rusage, ru_maxrss): calibrating the pinned settings (`circuit.calibrate`: the
circuit's rows and logrows), generating a TEST ONLY SRS of that size, the keys (`setup`, and the
proving key's size), committing one record (`record_commitment`), proving s records (witness and
proof), verifying (the verifier's own witness, which recomputes the weight commitment, and the
check), the proof artifact's size, and the half-width of the 95% Wilson interval that s gives
(the widest over every possible count: what s guarantees before the proof is made). Weights are
the built-in model's seeded initial ones (the cost does not depend on them); records are the
dataset's first test records. Setup and proving run under the machine's prover lock
(`zk.queue`: one at a time, memory), as a node's would. A circuit of more than 2^MAX_LOGROWS rows
is calibrated (its rows are reported) but not set up: its row says so (memory grows with the
rows; 2^17 rows made a 1.2 GB proving key and ~3 GB peak). `fashion-mnist/*` (784 inputs) needs
Debian's dataset-fashion-mnist; a case that cannot run says why in its row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULT_CASES = "digits/logreg,digits/mlp,fashion-mnist/mlp"
DEFAULT_SIZES = "1,8"
MAX_LOGROWS = 17


class TooLarge(Exception):
    """A circuit above --max-logrows: calibrated, not set up."""

    def __init__(self, rows: int, logrows: int, most: int) -> None:
        super().__init__(f"2^{logrows} > 2^{most} rows (--max-logrows)")
        self.rows, self.logrows = rows, logrows


def measure_one(case: str, s: int, work: Path, max_logrows: int = MAX_LOGROWS) -> dict[str, Any]:
    """One case, in this process (the child)."""
    from consortium.learning.datasets import load_dataset
    from consortium.learning.models import build_model
    from consortium.protocol.beacon import attempt_beacon
    from consortium.zk.circuit import (
        calibrate,
        keys_for,
        new_salt,
        record_commitment,
        record_vector,
        settings_logrows,
        shape_of,
    )
    from consortium.zk.proof import prove, verify
    from consortium.zk.queue import ProverLock
    from consortium.zk.srs import local_test_srs
    from consortium.zk.testdata import CommittedTestData, half_width, sample_indices

    dataset, model_name = case.split("/")
    data = load_dataset(dataset)
    classes = int(data.y_train.max()) + 1
    model = build_model(model_name, data.input_shape, classes, seed=0)
    out: dict[str, Any] = {"case": case, "s": s, "ci95": half_width(s)}
    t = time.perf_counter()
    shape = shape_of(model, data.input_shape, s)
    settings = calibrate(model, shape)
    out["settings_s"] = time.perf_counter() - t
    info = json.loads(settings)
    out["rows"], out["logrows"] = int(info["num_rows"]), settings_logrows(settings)
    if out["logrows"] > max_logrows:
        raise TooLarge(out["rows"], out["logrows"], max_logrows)
    with ProverLock().hold():  # setup and proving: one at a time per machine (memory)
        t = time.perf_counter()
        srs = local_test_srs(work / "srs", out["logrows"])
        out["srs_s"] = time.perf_counter() - t
        t = time.perf_counter()
        keys = keys_for(model, shape, settings, srs, work / "keys")
        out["setup_s"] = time.perf_counter() - t
        out["pk_mib"] = keys.pk.stat().st_size / 2**20
        x, y = data.x_test, data.y_test
        n = max(s, 2 * s)
        vectors = [record_vector(x[i], int(y[i]), new_salt()) for i in range(n)]
        t = time.perf_counter()
        commitments = [record_commitment(v, keys) for v in vectors]
        out["commit_ms_per_record"] = 1000 * (time.perf_counter() - t) / n
        tree = CommittedTestData(commitments)
        beacon = attempt_beacon(b"\x00" * 32, 0)
        sample = sample_indices(beacon, tree.size, s)
        t = time.perf_counter()
        proof = prove(model, shape, keys, tree, [vectors[i] for i in sample.indices], sample,
                      beacon=beacon, model_cid="bench")  # fmt: skip
        out["prove_s"] = time.perf_counter() - t
    t = time.perf_counter()
    claims = verify(proof.to_bytes(), model=model, model_cid="bench", shape=shape, keys=keys)
    out["verify_s"] = time.perf_counter() - t
    out["proof_bytes"] = len(proof.proof)
    out["artifact_bytes"] = len(proof.to_bytes())
    out["correct"] = claims.correct
    return out


def run_case(case: str, s: int, max_logrows: int = MAX_LOGROWS) -> dict[str, Any]:
    """One case in a child process; its peak RSS from the kernel's rusage of that child."""
    with tempfile.TemporaryDirectory(prefix="consortium-bench-zk-") as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "consortium.bench.zk", "--one", case, str(s), tmp,
               str(max_logrows)]  # fmt: skip
        t = time.perf_counter()
        with open(Path(tmp) / "stderr", "wb") as log:  # a file: EZKL's logs may fill a pipe
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
            _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err = (Path(tmp) / "stderr").read_text(errors="replace")
        wall = time.perf_counter() - t
        if proc.returncode < 0:
            return {"case": case, "s": s, "error": f"killed by signal {-proc.returncode}"}
        if proc.returncode != 0 or not result.is_file():
            lines = [ln for ln in err.splitlines() if ln.strip() and "low scale" not in ln]
            return {"case": case, "s": s, "error": (lines[-1:] or ["no output"])[0][:200]}
        out: dict[str, Any] = json.loads(result.read_text())
        if "error" in out:
            return out
        out["peak_mib"] = usage.ru_maxrss / 1024  # KiB on Linux
        out["wall_s"] = wall
        return out


COLUMNS = [
    ("case", "case", "{}"),
    ("s", "s", "{}"),
    ("rows", "rows", "{:,}"),
    ("logrows", "logrows", "{}"),
    ("settings_s", "settings s", "{:.1f}"),
    ("setup_s", "setup s", "{:.1f}"),
    ("pk_mib", "pk MiB", "{:.0f}"),
    ("commit_ms_per_record", "commit ms/record", "{:.0f}"),
    ("prove_s", "prove s", "{:.1f}"),
    ("verify_s", "verify s", "{:.2f}"),
    ("proof_bytes", "proof bytes", "{}"),
    ("ci95", "±95% (worst)", "{:.2f}"),
    ("peak_mib", "peak MiB", "{:.0f}"),
]


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| " + " | ".join(h for _, h, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for r in rows:
        if "error" in r:
            size = f"{r['rows']:,} | {r['logrows']}" if "rows" in r else " | "
            lines.append(f"| {r['case']} | {r['s']} | {size} | not run: {r['error']} |")
            continue
        lines.append("| " + " | ".join(f.format(r[k]) for k, _, f in COLUMNS) + " |")
    lines.append("")
    lines.append("SRS: TEST ONLY (generated locally); weights: seeded initial ones.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--one"]:
        case, s, work, most = argv[1], int(argv[2]), Path(argv[3]), int(argv[4])
        try:
            out = measure_one(case, s, work, most)
        except TooLarge as exc:
            out = {"case": case, "s": s, "rows": exc.rows, "logrows": exc.logrows,
                   "error": f"not set up: {exc}"}  # fmt: skip
        (work / "result.json").write_text(json.dumps(out))
        return 0
    parser = argparse.ArgumentParser(
        prog="consortium bench zk",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--cases",
        default=DEFAULT_CASES,
        help="dataset/model pairs, comma-separated (models: logreg, mlp, cnn)",
    )
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="sample sizes s, e.g. 1,8,32")
    parser.add_argument(
        "--max-logrows",
        type=int,
        default=MAX_LOGROWS,
        help="set up and prove only circuits of at most 2^N rows (memory); larger ones report "
        "their rows",
    )
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--out", type=Path, help="also write the table (or JSON) to this file")
    args = parser.parse_args(argv)
    try:
        sizes = [int(v) for v in args.sizes.split(",") if v]
    except ValueError:
        parser.error(f"--sizes takes integers: {args.sizes}")
    if not sizes or min(sizes) < 1:
        parser.error("--sizes takes positive integers")
    rows = []
    for case in [c for c in args.cases.split(",") if c]:
        if case.count("/") != 1:
            parser.error(f"a case is dataset/model: {case}")
        for s in sizes:
            rows.append(run_case(case, s, args.max_logrows))
            print(f"{case} s={s}: done", file=sys.stderr, flush=True)
    text = json.dumps(rows, indent=2) if args.json else table(rows)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
