"""Proofs of evaluation on chain: EZKL's verifier contract and a binding wrapper, compiled offline
and checked on the embedded chain (py-evm).

`ezkl.create_evm_verifier` renders the Solidity (`Halo2Verifier`) offline, then asks svm for a
solc binary, which it downloads from binaries.soliditylang.org: offline that call fails after
the `.sol` is written, and we compile the file with npm's `solc` (solc-js, the compiler inside
the package: `make solcjs`) instead.

The generated contract checks a proof with the commitments written inside it, so on its own it
accepts a proof of ANY model on ANY records. `EvalProofCheck.sol` (compiled with it, deployed
with the verifier's address) binds them: it reads the commitments from the proof (the records'
first, in sample order, then the weights'), refuses a weight commitment other than the one it is
given (`weight-commitment-mismatch`; recomputed off chain from the model at the CID, see
`check_on_chain`), a record commitment that is not the leaf at its sampled position under the
committed test-data root (`record-not-committed`, RFC 9162 inclusion checked on chain), and a
public output other than the claimed count (`accuracy-mismatch`), and a call with other
counts of commitments than the circuit's (`proof-malformed`: its constructor fixes s and the
weight columns), then calls the verifier (`proof-invalid` when it refuses). What stays off
chain: recomputing the weight commitment (a KZG commitment to the quantized weights), and that
the positions are the beacon's draw (`proof.verify` checks both).
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from eth_utils.crypto import keccak
from torch import nn

from consortium.core.files import atomic_write
from consortium.zk.circuit import Keys, Shape
from consortium.zk.errors import (
    ACCURACY_MISMATCH,
    COMMITMENT_MISMATCH,
    NOT_INSTALLED,
    PROOF_INVALID,
    PROOF_MALFORMED,
    RECORD_NOT_COMMITTED,
    WEIGHTS_MISMATCH,
    ZkError,
    require_ezkl,
)
from consortium.zk.proof import EvalClaims, EvalProof, weight_commitments

GAS_LIMIT = 30_000_000
SOLC_VERSION = "0.8.37"
SOLCJS_ENV = "CONSORTIUM_SOLCJS"
WRAPPER = "EvalProofCheck"
#: The wrapper's custom errors, by the rule each enforces (selectors: keccak of the signature).
ERRORS = {
    "ProofMalformed()": PROOF_MALFORMED,
    "WeightCommitmentMismatch(uint256)": WEIGHTS_MISMATCH,
    "RecordNotCommitted(uint256)": RECORD_NOT_COMMITTED,
    "AccuracyMismatch(uint256,uint256)": ACCURACY_MISMATCH,
    "ProofInvalid()": PROOF_INVALID,
}
_SELECTORS = {keccak(text=sig)[:4]: (sig, rule) for sig, rule in ERRORS.items()}


def find_solcjs(root: Path | None = None) -> Path:
    """solc-js: $CONSORTIUM_SOLCJS, or `make solcjs`'s .tmp/solcjs in the checkout (or `root`)."""
    root = root or Path(__file__).resolve().parents[3]
    for p in (os.environ.get(SOLCJS_ENV), root / ".tmp/solcjs/node_modules/.bin/solcjs"):
        if p and Path(p).is_file():
            return Path(p)
    raise ZkError(
        NOT_INSTALLED,
        f"the on-chain check needs solc-js {SOLC_VERSION} (npm): `make solcjs`, or set "
        f"{SOLCJS_ENV} to its solcjs command",
    )


def render_verifier(keys: Keys, sol: Path) -> Path:
    """Write the Solidity verifier of `keys` to `sol` (offline; svm's download may fail after)."""
    ezkl = require_ezkl()

    async def go() -> Any:
        return await ezkl.create_evm_verifier(
            str(keys.vk), str(keys.settings), str(sol), str(sol.with_suffix(".abi")),
            srs_path=str(keys.srs.path),
        )  # fmt: skip

    try:
        asyncio.run(go())
    except RuntimeError as exc:
        if not sol.is_file() or "svm" not in str(exc):
            raise ZkError(PROOF_INVALID, f"EZKL could not render the verifier: {exc}") from exc
    return sol


@dataclass(frozen=True)
class Contract:
    abi: list[dict[str, Any]]
    bytecode: str


def _solc(solcjs: Path, name: str, source: str, contract: str, *, via_ir: bool) -> Contract:
    """Compile one source with solc-js's standard JSON interface (optimizer on)."""
    request = {
        "language": "Solidity",
        "sources": {name: {"content": source}},
        "settings": {
            "viaIR": via_ir,
            "optimizer": {"enabled": True, "runs": 200},
            "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object"]}},
        },
    }
    try:
        # stdin from a file: solc-js reads it with readFileSync, which a large pipe breaks (EAGAIN)
        with tempfile.TemporaryFile("w+") as stdin:
            stdin.write(json.dumps(request))
            stdin.seek(0)
            proc = subprocess.run(
                [str(solcjs), "--standard-json"], stdin=stdin, capture_output=True, text=True,
                timeout=900, check=False,
            )  # fmt: skip
        out = json.loads(proc.stdout[proc.stdout.index("{") :])
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        raise ZkError(PROOF_INVALID, f"solc-js ({solcjs}) failed: {exc}") from exc
    errors = [e for e in out.get("errors", []) if e.get("severity") == "error"]
    try:
        found = out["contracts"][name][contract]
        return Contract(found["abi"], found["evm"]["bytecode"]["object"])
    except (KeyError, TypeError) as exc:
        why = "; ".join(e.get("formattedMessage", "")[:300] for e in errors) or str(exc)
        raise ZkError(PROOF_INVALID, f"solc-js could not compile {name}: {why}") from exc


def compile_verifier(sol: Path, solcjs: Path) -> Contract:
    """Compile EZKL's verifier with solc-js (`npm install solc@0.8.37`; `solcjs` is its
    command)."""
    return _solc(solcjs, sol.name, sol.read_text(), "Halo2Verifier", via_ir=False)


def compile_wrapper(solcjs: Path) -> Contract:
    """Compile `EvalProofCheck.sol` (via IR: its ABI decoder is too deep for the legacy one)."""
    source = resources.files("consortium.zk").joinpath(f"{WRAPPER}.sol").read_text()
    return _solc(solcjs, f"{WRAPPER}.sol", source, WRAPPER, via_ir=True)


@dataclass(frozen=True)
class Compiled:
    """The verifier of one circuit under one SRS, and the wrapper, ready to deploy."""

    key: str  # sha256 over (vk, settings, SRS, wrapper source, solc): one per circuit and SRS
    verifier: Contract
    wrapper: Contract


def compiled_for(keys: Keys, cache: Path, solcjs: Path | None = None) -> Compiled:
    """The compiled contracts for `keys`, rendered and compiled once, cached in `cache`."""
    wrapper_source = resources.files("consortium.zk").joinpath(f"{WRAPPER}.sol").read_bytes()
    key = hashlib.sha256(
        keys.vk.read_bytes() + keys.settings.read_bytes() + keys.srs.sha256.encode()
        + wrapper_source + SOLC_VERSION.encode()
    ).hexdigest()  # fmt: skip
    path = Path(cache) / f"evm-{key[:32]}.json"
    if path.is_file():
        try:
            kept = json.loads(path.read_text())
            return Compiled(key, Contract(**kept["verifier"]), Contract(**kept["wrapper"]))
        except (ValueError, KeyError, TypeError):
            pass  # remade below
    solcjs = solcjs or find_solcjs()
    with tempfile.TemporaryDirectory(prefix="consortium-evm-") as tmp:
        verifier = compile_verifier(render_verifier(keys, Path(tmp) / "Verifier.sol"), solcjs)
    wrapper = compile_wrapper(solcjs)
    Path(cache).mkdir(parents=True, exist_ok=True)
    body = {c: {"abi": x.abi, "bytecode": x.bytecode} for c, x in
            (("verifier", verifier), ("wrapper", wrapper))}  # fmt: skip
    atomic_write(path, json.dumps(body).encode())
    return Compiled(key, verifier, wrapper)


class EmbeddedChain:
    """A py-evm chain in this process (eth-tester) with the verifiers deployed on it, one per
    circuit and SRS (`Compiled.key`), each with its wrapper."""

    def __init__(self) -> None:
        from eth_tester import EthereumTester, PyEVMBackend
        from web3 import EthereumTesterProvider, Web3

        params = PyEVMBackend.generate_genesis_params(overrides={"gas_limit": GAS_LIMIT})
        backend = PyEVMBackend(genesis_parameters=params)
        self.w3 = Web3(EthereumTesterProvider(EthereumTester(backend)))
        self.sender = self.w3.eth.accounts[0]
        self.deployed: dict[str, tuple[str, str, int]] = {}  # key -> verifier, wrapper, gas

    def _deploy(self, contract: Contract, *args: Any) -> tuple[str, int]:
        factory = self.w3.eth.contract(abi=contract.abi, bytecode=contract.bytecode)
        tx = factory.constructor(*args).transact({"from": self.sender, "gas": GAS_LIMIT - 1})
        receipt: Any = self.w3.eth.wait_for_transaction_receipt(tx)
        if receipt.status != 1 or not receipt.contractAddress:
            raise ZkError(PROOF_INVALID, "the verifier contract could not be deployed")
        return str(receipt.contractAddress), int(receipt.gasUsed)

    def deploy(self, compiled: Compiled, records: int, weights: int) -> tuple[str, str, int]:
        """(verifier address, wrapper address, deployment gas), deploying once per circuit: the
        wrapper fixes the circuit's number of record and weight commitments."""
        key = f"{compiled.key}/{records}/{weights}"
        if key not in self.deployed:
            verifier, gas = self._deploy(compiled.verifier)
            wrapper, gas2 = self._deploy(compiled.wrapper, verifier, records, weights)
            self.deployed[key] = (verifier, wrapper, gas + gas2)
        return self.deployed[key]

    def call(self, to: str, data: bytes) -> tuple[bytes | None, bytes, int]:
        """eth_call: (return data, or None on a revert; the revert data; gas)."""
        tx: Any = {"to": to, "from": self.sender, "data": "0x" + data.hex()}
        limited: Any = {**tx, "gas": GAS_LIMIT - 1}
        try:
            result = bytes(self.w3.eth.call(limited))
        except Exception as exc:  # a revert; web3 carries its data in the exception
            return None, _revert_data(exc), 0
        return result, b"", int(self.w3.eth.estimate_gas(tx))


def _revert_data(exc: BaseException) -> bytes:
    """The revert data from web3's or eth-tester's exception (eth-tester writes it into its
    message as a bytes literal: "execution reverted: b'...'")."""
    for value in (getattr(exc, "data", None), *exc.args):
        if isinstance(value, bytes):
            return value
        if not isinstance(value, str):
            continue
        if value.startswith("0x"):
            try:
                return bytes.fromhex(value[2:])
            except ValueError:
                continue
        for quote in ("b'", 'b"'):
            if quote in value:
                try:
                    data = ast.literal_eval(value[value.index(quote) :])
                except (ValueError, SyntaxError):
                    continue
                if isinstance(data, bytes):
                    return data
    return b""


_default_chain: EmbeddedChain | None = None


def embedded_chain() -> EmbeddedChain:
    """This process's embedded chain (made at the first use)."""
    global _default_chain
    if _default_chain is None:
        _default_chain = EmbeddedChain()
    return _default_chain


@dataclass(frozen=True)
class ChainCheck:
    """A proof accepted on chain, and what it cost."""

    verifier: str  # addresses on the embedded chain
    wrapper: str
    deploy_gas: int  # both contracts, once per circuit and SRS
    verify_gas: int  # one verifyEvaluation call


def _instance(proof_json: bytes) -> int:
    try:
        (row,) = json.loads(proof_json)["instances"]
        (word,) = row
        return int.from_bytes(bytes.fromhex(word), "little")
    except (ValueError, KeyError, TypeError) as exc:
        raise ZkError(PROOF_MALFORMED, f"EZKL's proof has not one public output: {exc}") from exc


def check_on_chain(
    artifact: EvalProof | bytes,
    *,
    model: nn.Module,
    shape: Shape,
    keys: Keys,
    testdata: tuple[bytes, int] | None = None,
    cache: Path,
    solcjs: Path | None = None,
    chain: EmbeddedChain | None = None,
) -> ChainCheck:
    """Check a proof of evaluation on the embedded chain, bound to `model` (the model at the CID
    on the ledger) and the committed test data.

    The weight commitment is recomputed here from `model` (as `proof.verify` does) and given to
    the wrapper with the test-data root and size (`testdata`, the committed ones; default the
    claims'), the claimed positions and inclusion paths and the claimed count; the wrapper reads
    the commitments from the proof itself and refuses, by name, any that differ, then runs
    EZKL's verifier. The contracts are compiled once per circuit and SRS (`cache`) and deployed
    once per chain. Returns the gas figures; raises ZkError naming the rule a refused proof
    breaks. Off chain, not here: that the positions are the beacon's draw (`proof.verify`)."""
    proof = artifact if isinstance(artifact, EvalProof) else EvalProof.from_bytes(artifact)
    c = proof.claims
    if testdata is not None and (c.testdata_root, c.testdata_size) != testdata:
        raise ZkError(COMMITMENT_MISMATCH, "the proof is on another test-data commitment")
    require_ezkl()
    weights = weight_commitments(model, shape, keys)
    chain = chain or embedded_chain()
    compiled = compiled_for(keys, cache, solcjs)
    verifier, wrapper, deploy_gas = chain.deploy(compiled, shape.s, len(weights))
    proof_bytes, instances = evm_proof(proof.proof)
    data = evaluation_calldata(proof_bytes, instances, weights, c)
    result, revert, gas = chain.call(wrapper, data)
    if result is None:
        raise refusal(revert)
    if int.from_bytes(result[-32:], "big") != 1:
        raise ZkError(PROOF_INVALID, "the on-chain check did not return true")
    return ChainCheck(verifier, wrapper, deploy_gas, gas)


def evm_proof(proof_json: bytes) -> tuple[bytes, list[int]]:
    """EZKL's proof as the EVM verifier takes it: (proof bytes, public instances)."""
    ezkl = require_ezkl()
    with tempfile.TemporaryDirectory(prefix="consortium-evm-") as tmp:
        (Path(tmp) / "proof.json").write_bytes(proof_json)
        try:
            calldata = bytes(ezkl.encode_evm_calldata(str(Path(tmp) / "proof.json"),
                                                      str(Path(tmp) / "calldata.bin")))  # fmt: skip
        except (RuntimeError, ValueError) as exc:
            raise ZkError(PROOF_MALFORMED, f"EZKL could not encode the proof: {exc}") from exc
    from eth_abi.abi import decode as abi_decode

    try:
        proof_bytes, instances = abi_decode(["bytes", "uint256[]"], calldata[4:])
    except Exception as exc:
        raise ZkError(PROOF_MALFORMED, f"EZKL's calldata is not (bytes, uint256[]): {exc}") from exc
    if list(instances) != [_instance(proof_json)]:
        raise ZkError(PROOF_MALFORMED, "EZKL's calldata and proof disagree on the public output")
    return bytes(proof_bytes), [int(v) for v in instances]


VERIFY_TYPES = ["bytes", "uint256[]", "bytes32[]", "bytes32", "uint256", "uint256[]",
                "bytes32[][]", "uint256"]  # fmt: skip


def evaluation_calldata(
    proof: bytes, instances: Sequence[int], weights: Sequence[bytes], claims: EvalClaims
) -> bytes:
    """The call `verifyEvaluation(proof, instances, weights, root, size, indices, paths,
    correct)`, with the test-data root, positions, paths and count from `claims`."""
    from eth_abi.abi import encode as abi_encode

    args = [proof, list(instances), list(weights), claims.testdata_root, claims.testdata_size,
            list(claims.indices), [list(p) for p in claims.paths], claims.correct]  # fmt: skip
    selector = keccak(text=f"verifyEvaluation({','.join(VERIFY_TYPES)})")[:4]
    return selector + abi_encode(VERIFY_TYPES, args)


def refusal(revert: bytes) -> ZkError:
    """The ZkError for the wrapper's revert data, naming its rule (an unknown revert, e.g. out
    of gas, is `proof-invalid`)."""
    sig, rule = _SELECTORS.get(revert[:4], ("", PROOF_INVALID))
    detail = f" ({sig.split('(')[0]})" if sig else ""
    return ZkError(rule, f"the on-chain check refused the proof{detail}")
