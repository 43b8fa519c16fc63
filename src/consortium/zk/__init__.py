"""Proofs of evaluation with EZKL (issue 18): a node proves, without revealing its records, that
a committed global model classifies a beacon-drawn sample of its committed test records with a
stated number of correct predictions.

- `errors`: `ZkError`, each refusal named by its rule.
- `srs`: the KZG structured reference string, a supplied file checked against its sha256 or a
  locally generated one marked test only.
- `testdata`: committed test data (pure): per-record commitments as leaves of an RFC 9162 Merkle
  root, the sample drawn from the beacon, inclusion proofs, the confidence interval.
- `circuit`: the evaluation circuit built from a task's model, its pinned settings and keys.
- `proof`: prove and verify; the verifier recomputes the weight commitment from the model.
- `queue`: one proof at a time per machine (a file lock), off the round's critical path.

`ezkl` and `onnx` are the optional extra `zk` (`pip install consortium[zk]`); importing this
package does not need them, building or checking a proof does and says what to install.
"""

#: The default sample size s (records per proof; `RunConfig.proof_sample`'s default): the largest
#: power of two whose digits-MLP proof takes at most 60 s on 2 cores (`consortium bench zk`,
#: README "Proofs of evaluation"). Its worst-case 95% Wilson half-width: `testdata.half_width`.
DEFAULT_SAMPLE = 8
