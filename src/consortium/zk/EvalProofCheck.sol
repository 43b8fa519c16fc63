// SPDX-License-Identifier: MIT
pragma solidity ^0.8.0;

// Binds an EZKL proof of evaluation, on chain, to the model's weight commitment and to the
// node's committed test data (consortium.zk.evm; docs/architecture.md "Proofs of evaluation").
//
// EZKL's Halo2Verifier checks a proof with the commitments written inside it: a proof of any
// model on any records passes it. With inputs and parameters as `polycommit`, the proof opens
// with those commitments, as uncompressed BN254 points (x, y: 32-byte big-endian words): first
// one per record (in sample order), then the weight commitment(s). This contract reads them
// from the proof and refuses, by name, before calling the verifier:
//   - a weight commitment other than the one given (recomputed off chain from the model at the
//     CID: a KZG commitment to the quantized weights, which the chain cannot recompute cheaply);
//   - a record commitment that is not the leaf at its sampled position under the test-data
//     root (RFC 9162 inclusion, leaf = sha256(0x00 || commitment), node = sha256(0x01 || l || r));
//   - a public output (the number correct) other than the claimed one.
// Commitments are compared in halo2curves' compressed form (x little-endian, top bit of the
// last byte set when y is odd), the form the claims and the test-data leaves use.

interface IHalo2Verifier {
    function verifyProof(bytes calldata proof, uint256[] calldata instances)
        external
        returns (bool);
}

contract EvalProofCheck {
    address public immutable verifier;
    uint256 public immutable records; // s: the circuit's record commitments, first in the proof
    uint256 public immutable weightColumns; // then its weight commitments

    error ProofMalformed();
    error WeightCommitmentMismatch(uint256 column);
    error RecordNotCommitted(uint256 k);
    error AccuracyMismatch(uint256 stated, uint256 claimed);
    error ProofInvalid();

    // One per circuit (its verifier, s and weight columns): a caller cannot skip a check by
    // giving fewer commitments or positions than the proof carries.
    constructor(address verifier_, uint256 records_, uint256 weightColumns_) {
        verifier = verifier_;
        records = records_;
        weightColumns = weightColumns_;
    }

    function compressed(bytes calldata proof, uint256 point) public pure returns (bytes32) {
        uint256 x = uint256(bytes32(proof[64 * point:64 * point + 32]));
        uint256 y = uint256(bytes32(proof[64 * point + 32:64 * point + 64]));
        uint256 le = 0;
        for (uint256 i = 0; i < 32; i++) {
            le = (le << 8) | ((x >> (8 * i)) & 0xff);
        }
        if (y & 1 == 1) {
            le |= 0x80;
        }
        return bytes32(le);
    }

    function included(bytes32 root, uint256 size, uint256 index, bytes32 leaf,
                      bytes32[] calldata path) public pure returns (bool) {
        if (index >= size) {
            return false;
        }
        uint256 fn = index;
        uint256 sn = size - 1;
        bytes32 r = sha256(abi.encodePacked(bytes1(0x00), leaf));
        for (uint256 i = 0; i < path.length; i++) {
            if (sn == 0) {
                return false;
            }
            if (fn & 1 == 1 || fn == sn) {
                r = sha256(abi.encodePacked(bytes1(0x01), path[i], r));
                if (fn & 1 == 0) {
                    while (fn & 1 == 0 && fn != 0) {
                        fn >>= 1;
                        sn >>= 1;
                    }
                }
            } else {
                r = sha256(abi.encodePacked(bytes1(0x01), r, path[i]));
            }
            fn >>= 1;
            sn >>= 1;
        }
        return sn == 0 && r == root;
    }

    // True when the proof shows `correct` of the records at `indices` of the test data committed
    // as (root, size) correct, for the model whose weight commitment(s) are `weights`; otherwise
    // it reverts with the name of the rule broken.
    function verifyEvaluation(
        bytes calldata proof,
        uint256[] calldata instances,
        bytes32[] calldata weights,
        bytes32 root,
        uint256 size,
        uint256[] calldata indices,
        bytes32[][] calldata paths,
        uint256 correct
    ) external returns (bool) {
        if (
            indices.length != records || weights.length != weightColumns
                || paths.length != records || instances.length != 1
                || proof.length < 64 * (records + weightColumns)
        ) {
            revert ProofMalformed();
        }
        checkWeights(proof, indices.length, weights);
        checkRecords(proof, root, size, indices, paths);
        if (instances[0] != correct) {
            revert AccuracyMismatch(instances[0], correct);
        }
        try IHalo2Verifier(verifier).verifyProof(proof, instances) returns (bool ok) {
            if (!ok) {
                revert ProofInvalid();
            }
        } catch {
            revert ProofInvalid();
        }
        return true;
    }

    function checkWeights(bytes calldata proof, uint256 s, bytes32[] calldata weights)
        internal
        pure
    {
        for (uint256 j = 0; j < weights.length; j++) {
            if (compressed(proof, s + j) != weights[j]) {
                revert WeightCommitmentMismatch(j);
            }
        }
    }

    function checkRecords(
        bytes calldata proof,
        bytes32 root,
        uint256 size,
        uint256[] calldata indices,
        bytes32[][] calldata paths
    ) internal pure {
        for (uint256 k = 0; k < indices.length; k++) {
            if (!included(root, size, indices[k], compressed(proof, k), paths[k])) {
                revert RecordNotCommitted(k);
            }
        }
    }
}
