"""The errors of proofs of evaluation: each refusal carries the name of the rule it enforces."""

from __future__ import annotations

import importlib
from typing import Any

from consortium.core.errors import ConsortiumError

SRS_MISSING = "srs-missing"
SRS_MISMATCH = "srs-mismatch"
PROOF_MALFORMED = "proof-malformed"
MODEL_MISMATCH = "model-mismatch"
SETTINGS_MISMATCH = "settings-mismatch"
COMMITMENT_MISMATCH = "testdata-mismatch"
SAMPLE_MISMATCH = "sample-mismatch"
RECORD_NOT_COMMITTED = "record-not-committed"
WEIGHTS_MISMATCH = "weight-commitment-mismatch"
ACCURACY_MISMATCH = "accuracy-mismatch"
PROOF_INVALID = "proof-invalid"
NOT_INSTALLED = "zk-not-installed"


class ZkError(ConsortiumError):
    """A proof of evaluation that cannot be made or is refused; `rule` names the check."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"{rule}: {message}")
        self.rule = rule


def require(module: str) -> Any:
    """The optional module `module` of the `zk` extra, or one clear error saying how to install
    it (a user without the extra gets that line, not an ImportError's traceback)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ZkError(
            NOT_INSTALLED, f"proofs of evaluation need {module}: pip install 'consortium[zk]'"
        ) from exc


def require_ezkl() -> Any:
    """The `ezkl` module, or one clear error saying how to install it."""
    return require("ezkl")


def require_onnx() -> Any:
    """The `onnx` module (torch's ONNX export needs it too), or one clear error."""
    return require("onnx")
