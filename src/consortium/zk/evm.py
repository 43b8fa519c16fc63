"""The on-chain verifier EZKL generates, compiled offline and checked on the embedded chain.

`ezkl.create_evm_verifier` renders the Solidity (`Halo2Verifier`) offline, then asks svm for a
solc binary, which it downloads from binaries.soliditylang.org: offline that call fails after
the `.sol` is written, and we compile the file with npm's `solc` (solc-js, the compiler inside
the package) instead. The contract checks a proof with the commitments inside it; that they are
the model's weight commitment and the committed records is `proof.verify`'s job, off chain.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consortium.zk.circuit import Keys
from consortium.zk.errors import PROOF_INVALID, ZkError, require_ezkl

GAS_LIMIT = 30_000_000


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


def compile_verifier(sol: Path, solcjs: Path) -> Contract:
    """Compile with solc-js (`npm install solc@0.8.37`; `solcjs` is its command)."""
    with tempfile.TemporaryDirectory(prefix="consortium-solc-") as tmp:
        proc = subprocess.run(
            [str(solcjs), "--bin", "--abi", "--optimize", "-o", tmp, str(sol)],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        bins = sorted(Path(tmp).glob("*Halo2Verifier.bin"))
        abis = sorted(Path(tmp).glob("*Halo2Verifier.abi"))
        if proc.returncode != 0 or not bins or not abis:
            raise ZkError(PROOF_INVALID, f"solcjs failed: {proc.stderr.strip()[-300:]}")
        return Contract(json.loads(abis[0].read_text()), bins[0].read_text().strip())


@dataclass(frozen=True)
class ChainCheck:
    ok: bool
    deploy_gas: int
    verify_gas: int


def check_on_chain(contract: Contract, proof_json: bytes) -> ChainCheck:
    """Deploy the verifier on a fresh embedded chain (py-evm) and call verifyProof."""
    from eth_tester import EthereumTester, PyEVMBackend
    from web3 import EthereumTesterProvider, Web3

    ezkl = require_ezkl()
    params = PyEVMBackend.generate_genesis_params(overrides={"gas_limit": GAS_LIMIT})
    w3 = Web3(EthereumTesterProvider(EthereumTester(PyEVMBackend(genesis_parameters=params))))
    sender = w3.eth.accounts[0]
    factory = w3.eth.contract(abi=contract.abi, bytecode=contract.bytecode)
    receipt: Any = w3.eth.wait_for_transaction_receipt(
        factory.constructor().transact({"from": sender, "gas": GAS_LIMIT - 1})
    )
    with tempfile.TemporaryDirectory(prefix="consortium-evm-") as tmp:
        (Path(tmp) / "proof.json").write_bytes(proof_json)
        calldata = bytes(ezkl.encode_evm_calldata(str(Path(tmp) / "proof.json"),
                                                  str(Path(tmp) / "calldata.bin")))  # fmt: skip
    tx: Any = {"to": receipt.contractAddress, "from": sender, "data": "0x" + calldata.hex()}
    try:
        call: Any = {**tx, "gas": GAS_LIMIT - 1}
        result = w3.eth.call(call)
        gas = w3.eth.estimate_gas(tx)
    except Exception:  # a failing check reverts
        return ChainCheck(False, int(receipt.gasUsed), 0)
    return ChainCheck(int.from_bytes(bytes(result)[-32:], "big") == 1, int(receipt.gasUsed), gas)
