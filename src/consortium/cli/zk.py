"""`consortium zk prove|verify`: proofs of evaluation from the shell (issue 18)."""

from __future__ import annotations

from pathlib import Path

import typer

from consortium.cli.common import console, handle_errors
from consortium.node.proofs import (
    SrsChoice,
    interval_text,
    prove_round,
    verify_proof,
)
from consortium.zk import DEFAULT_SAMPLE

zk_app = typer.Typer(
    help="Zero-knowledge proofs of evaluation (EZKL): prove a committed model's accuracy on a "
    "beacon-drawn sample of this node's committed test records, or check such a proof.",
    no_args_is_help=True,
)

_SRS = typer.Option(
    None, "--srs", help="The run's KZG SRS file (a ceremony's); needs --srs-sha256."
)
_SRS_SHA = typer.Option(
    None, "--srs-sha256", help="The SRS hash the run agreed; the file must have it."
)
_TEST_SRS = typer.Option(
    False,
    "--test-srs",
    help="Use a locally generated SRS (DIR/zk/srs, made if missing; or --srs FILE unchecked). "
    "TEST ONLY: whoever generated it could forge proofs; every output says so.",
)


def _say(text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


@zk_app.command("prove")
@handle_errors
def prove_cmd(
    directory: Path = typer.Argument(..., help="The node folder."),
    round_no: int = typer.Option(..., "--round", min=1, help="The committed round whose model."),
    sample: int = typer.Option(
        DEFAULT_SAMPLE, "--sample", min=1, help="Records to prove on (s; more: tighter interval)."
    ),
    run: str | None = typer.Option(None, "--run", help="Run id (default: the latest)."),
    srs: Path | None = _SRS,
    srs_sha256: str | None = _SRS_SHA,
    test_srs: bool = _TEST_SRS,
) -> None:
    """Prove the model of round R on s of this node's test records and store the proof.

    The records are committed first (once per circuit and SRS; salts kept in DIR/zk/); the s
    positions come from the beacon of round R+1, which must have committed. The proof covers
    the quantized model (scale 2^7) on records this node chose and committed to. Prints the
    proof's CID and the claim with its 95% interval for s. One proof at a time per machine."""
    done = prove_round(
        directory,
        round_no,
        srs=SrsChoice(srs, srs_sha256, test_srs),
        s=sample,
        run=run,
    )
    c = done.claims
    if done.committed_now:
        _say(
            f"committed {c.testdata_size} test records (root {c.testdata_root.hex()}); "
            "not yet a ledger entry, so not binding"
        )
    _say(done.cid)
    _say(f"model {c.model} ({done.found.describe()})")
    _say(interval_text(c))
    _say(f"SRS {done.srs.label}; proved in {done.seconds:.1f} s")


@zk_app.command("verify")
@handle_errors
def verify_cmd(
    directory: Path = typer.Argument(..., help="A node folder holding the ledger and the proof."),
    proof_cid: str = typer.Argument(..., help="CID of the proof in DIR's store."),
    srs: Path | None = _SRS,
    srs_sha256: str | None = _SRS_SHA,
    test_srs: bool = _TEST_SRS,
    onchain: bool = typer.Option(
        False,
        "--onchain",
        help="Also check the proof on the embedded EVM chain: EZKL's verifier contract behind a "
        "wrapper that binds the recomputed weight commitment and the committed test-data root "
        "(needs solc-js: make solcjs, or CONSORTIUM_SOLCJS).",
    ),
) -> None:
    """Check a proof of evaluation against the model its round committed on the ledger.

    The weight commitment is recomputed from that model, the sample from the next round's
    beacon, each record's inclusion under the committed root checked; exit 1 naming the rule
    a refused proof breaks. With --onchain, the same proof is then checked by contracts on the
    embedded chain (compiled offline once per circuit and SRS, into DIR/zk/evm)."""
    done = verify_proof(
        directory, proof_cid, srs=SrsChoice(srs, srs_sha256, test_srs), onchain=onchain
    )
    c = done.claims
    _say(f"OK: proof {proof_cid} of model {c.model} ({done.found.describe()})")
    _say(interval_text(c))
    if done.chain is not None:
        _say(
            f"OK on chain (embedded py-evm): EvalProofCheck {done.chain.wrapper} over EZKL's "
            f"verifier {done.chain.verifier} accepted it ({done.chain.verify_gas:,} gas; "
            f"deployment {done.chain.deploy_gas:,} gas, once per circuit and SRS)"
        )
    _say(f"SRS {done.srs.label}")
