"""The evaluation circuit, built from a task's model, and its pinned settings and keys.

The circuit is the ONNX export of `EvalWrapper`: its inputs are one tensor per sampled record,
[features | label | salt columns]; its single public output is the number of records whose
label's logit is the maximum (a tie counts as correct). The label is a class index; the circuit
turns it into a one-hot itself (`label == classes`), so a committed record cannot claim several
labels, and a label outside the classes never counts. The salt columns enter no computation:
they are committed with the record and hide it.

EZKL settings: inputs and parameters as `polycommit` (one KZG commitment per record, one to the
weights), the output public, scales 2^7, range checks decomposed in base 128 (a 128-row table
rather than EZKL's default 16384, which alone forced 2^17 rows), and `logrows` the smallest that
holds the circuit's rows. They are calibrated ONCE per (model architecture, s) with whatever
weights the model has (the row count does not depend on them), canonicalised (sorted, no
timestamp) and pinned by their sha256: with the settings fixed, the keys depend only on the
architecture and the SRS, never on a round's weights (tests/test_zk.py checks this).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import tempfile
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from consortium.core.files import atomic_write
from consortium.zk.errors import SETTINGS_MISMATCH, ZkError, require_ezkl, require_onnx
from consortium.zk.srs import Srs
from consortium.zk.testdata import COMMITMENT_SIZE

SCALE = 7
SALT_COLUMNS = 8
SALT_BITS = 20  # exact in float32; x 2^7 stays inside the range checks (128^4 = 2^28)
DECOMP_BASE, DECOMP_LEGS = 128, 4
OPSET = 18  # 20 draws a warning from EZKL's ONNX reader (tract)
#: Run-args every pinned settings file must have: anything else is not this circuit.
FIXED_RUN_ARGS: dict[str, Any] = {
    "input_scale": SCALE,
    "param_scale": SCALE,
    "input_visibility": "KZGCommit",
    "param_visibility": "KZGCommit",
    "output_visibility": "Public",
    "decomp_base": DECOMP_BASE,
    "decomp_legs": DECOMP_LEGS,
    "check_mode": "UNSAFE",
}


@dataclass(frozen=True)
class Shape:
    """What the circuit depends on besides the weights: the model's input and output sizes and
    the sample size s."""

    feature_shape: tuple[int, ...]
    classes: int
    s: int

    @property
    def features(self) -> int:
        return math.prod(self.feature_shape)

    @property
    def width(self) -> int:
        return self.features + 1 + SALT_COLUMNS


def shape_of(model: nn.Module, feature_shape: Sequence[int], s: int) -> Shape:
    """The circuit shape of `model` on records of `feature_shape`: classes from its output."""
    with torch.no_grad():
        out = copy.deepcopy(model).eval()(torch.zeros(1, *feature_shape))
    if out.dim() != 2:
        raise ZkError(SETTINGS_MISMATCH, "proofs of evaluation need a classifier (N x classes)")
    return Shape(tuple(int(d) for d in feature_shape), int(out.shape[1]), int(s))


class EvalWrapper(nn.Module):
    """forward(*records) -> [number of correct predictions]."""

    def __init__(self, model: nn.Module, shape: Shape) -> None:
        super().__init__()
        self.model = model
        self.shape = shape
        self.register_buffer(
            "classes", torch.arange(shape.classes, dtype=torch.float32).reshape(1, -1)
        )

    def forward(self, *records: torch.Tensor) -> torch.Tensor:
        f = self.shape.features
        total = torch.zeros(1)
        classes = self.get_buffer("classes")
        for r in records:
            x = r[:, :f].reshape(1, *self.shape.feature_shape)
            onehot = torch.eq(r[:, f : f + 1], classes).float()
            logits = self.model(x)
            top = logits.max(dim=1, keepdim=True).values
            total = total + ((logits >= top).float() * onehot).sum()
        return total.reshape(1)


def record_vector(features: npt.ArrayLike, label: int, salt: Sequence[int]) -> list[float]:
    """One record as a circuit input: [features | label | salt], float32 values."""
    if len(salt) != SALT_COLUMNS or not all(0 <= v < 2**SALT_BITS for v in salt):
        raise ValueError(f"a salt is {SALT_COLUMNS} integers below 2^{SALT_BITS}")
    row = np.concatenate(
        [np.asarray(features, dtype=np.float32).reshape(-1), [label], list(salt)]
    ).astype(np.float32)
    return [float(v) for v in row]


def new_salt() -> list[int]:
    return [int.from_bytes(os.urandom(4), "big") % 2**SALT_BITS for _ in range(SALT_COLUMNS)]


#: torch's ONNX exporter keeps global state: one export at a time per process (a node's proof
#: queue and its voter's check, or several in-process nodes, may export at once).
_EXPORT_LOCK = threading.Lock()


def export_onnx(model: nn.Module, shape: Shape, path: Path) -> None:
    wrapper = EvalWrapper(copy.deepcopy(model).float().eval(), shape).eval()
    dummy = tuple(torch.zeros(1, shape.width) for _ in range(shape.s))
    with _EXPORT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            dummy,
            str(path),
            input_names=[f"r{k}" for k in range(shape.s)],
            output_names=["correct"],
            dynamo=False,
            opset_version=OPSET,
        )
    graph = require_onnx().load(str(path)).graph
    if len(graph.input) != shape.s or len(graph.output) != 1:
        raise ZkError(SETTINGS_MISMATCH, "the exported evaluation graph lost an input or output")


def _run_args(logrows: int) -> Any:
    ezkl = require_ezkl()
    ra = ezkl.PyRunArgs()
    ra.input_visibility = "polycommit"
    ra.param_visibility = "polycommit"
    ra.output_visibility = "public"
    ra.input_scale = SCALE
    ra.param_scale = SCALE
    ra.decomp_base = DECOMP_BASE
    ra.decomp_legs = DECOMP_LEGS
    ra.lookup_range = (-1, 1)
    ra.logrows = logrows
    return ra


def canonical_settings(raw: dict[str, Any]) -> bytes:
    """Settings bytes that do not change from one calibration to the next."""
    raw = dict(raw)
    raw["timestamp"] = 0
    raw["required_range_checks"] = sorted(raw.get("required_range_checks", []))
    return json.dumps(raw, sort_keys=True, separators=(",", ":")).encode()


def calibrate(model: nn.Module, shape: Shape) -> bytes:
    """The pinned settings for `shape` (done once per architecture and s; any weights)."""
    ezkl = require_ezkl()
    with tempfile.TemporaryDirectory(prefix="consortium-zk-") as tmp:
        onnx, settings = Path(tmp) / "net.onnx", Path(tmp) / "settings.json"
        export_onnx(model, shape, onnx)
        if not ezkl.gen_settings(str(onnx), str(settings), py_run_args=_run_args(17)):
            raise ZkError(SETTINGS_MISMATCH, "EZKL could not lay out the evaluation circuit")
        rows = int(json.loads(settings.read_text())["num_rows"])
        # Room for halo2's blinding rows and the 128-row range-check table.
        logrows = max(8, math.ceil(math.log2(rows + 2 * DECOMP_BASE)))
        if not ezkl.gen_settings(str(onnx), str(settings), py_run_args=_run_args(logrows)):
            raise ZkError(SETTINGS_MISMATCH, "EZKL could not lay out the evaluation circuit")
        return canonical_settings(json.loads(settings.read_text()))


def check_settings(data: bytes, shape: Shape) -> dict[str, Any]:
    """Refuse (`settings-mismatch`) settings that are not this circuit's kind."""
    try:
        settings = json.loads(data)
        args = settings["run_args"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ZkError(SETTINGS_MISMATCH, f"not EZKL settings: {exc}") from exc
    wrong = {k: args.get(k) for k, v in FIXED_RUN_ARGS.items() if args.get(k) != v}
    if wrong:
        raise ZkError(SETTINGS_MISMATCH, f"settings with {wrong}; the evaluation circuit pins "
                      f"{ {k: FIXED_RUN_ARGS[k] for k in wrong} }")  # fmt: skip
    if settings.get("model_input_scales") != [SCALE] * shape.s:
        raise ZkError(SETTINGS_MISMATCH, f"settings for another sample size than s = {shape.s}")
    return dict(settings)


def architecture_hash(model: nn.Module, shape: Shape) -> str:
    """sha256 of the evaluation graph of `model` with its weights zeroed: the architecture."""
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for p in zeroed.state_dict().values():
            p.zero_()
    with tempfile.TemporaryDirectory(prefix="consortium-zk-") as tmp:
        export_onnx(zeroed, shape, Path(tmp) / "net.onnx")
        return hashlib.sha256((Path(tmp) / "net.onnx").read_bytes()).hexdigest()


def settings_logrows(data: bytes) -> int:
    return int(json.loads(data)["run_args"]["logrows"])


@dataclass(frozen=True)
class Keys:
    """A circuit's pinned settings and its keys for one SRS (cached on disk)."""

    settings: Path
    vk: Path
    pk: Path
    srs: Srs
    settings_sha256: str


def keys_for(model: nn.Module, shape: Shape, settings: bytes, srs: Srs, cache: Path) -> Keys:
    """The keys of the circuit (architecture of `model`, `settings`) under `srs`, made once and
    cached in `cache` by (settings, architecture, SRS) hashes. The weights do not enter them."""
    ezkl = require_ezkl()
    check_settings(settings, shape)
    srs.check_serves(settings_logrows(settings))
    digest = hashlib.sha256(settings).hexdigest()
    Path(cache).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".keys-", dir=cache) as tmp:
        onnx = Path(tmp) / "net.onnx"
        arch = architecture_hash(model, shape)
        export_onnx(model, shape, onnx)  # (zero weights may be folded away: compile real ones)
        folder = Path(cache) / hashlib.sha256(f"{digest}/{arch}/{srs.sha256}".encode()).hexdigest()
        keys = Keys(folder / "settings.json", folder / "vk.key", folder / "pk.key", srs, digest)
        if keys.vk.is_file() and keys.pk.is_file():
            return keys
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(keys.settings, settings)
        compiled = Path(tmp) / "net.ezkl"
        ezkl.compile_circuit(str(onnx), str(compiled), str(keys.settings))
        vk_tmp, pk_tmp = Path(tmp) / "vk.key", Path(tmp) / "pk.key"
        ezkl.setup(str(compiled), str(vk_tmp), str(pk_tmp), srs_path=str(srs.path))
        os.replace(pk_tmp, keys.pk)
        os.replace(vk_tmp, keys.vk)  # last: a folder with a vk is complete
    return keys


def compress_g1(x_hex: str, y_hex: str) -> bytes:
    """halo2curves' compressed BN254 G1 encoding (how EZKL's witness writes a commitment): x
    little-endian, the top bit of the last byte set when y is odd."""
    x, y = bytearray(bytes.fromhex(x_hex)), bytes.fromhex(y_hex)
    if len(x) != COMMITMENT_SIZE or len(y) != COMMITMENT_SIZE:
        raise ZkError(SETTINGS_MISMATCH, "EZKL returned a commitment of another size")
    if y[0] & 1:
        x[-1] |= 0x80
    return bytes(x)


def record_commitment(vector: Sequence[float], keys: Keys) -> bytes:
    """The KZG commitment EZKL's polycommit makes of one record as a circuit input."""
    ezkl = require_ezkl()
    felts = [ezkl.float_to_felt(v, SCALE) for v in vector]
    (point,) = ezkl.kzg_commit(felts, str(keys.vk), str(keys.settings), str(keys.srs.path))
    return compress_g1(point.x, point.y)
