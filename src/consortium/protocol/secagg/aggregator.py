"""SecAgg+ aggregator (server/leader side) as a sans-I/O state machine.

Theory of operation:

    stage    receive_*                 finish_*() returns         live set after finish
    KEYS     receive_keys              list[NeighbourKeys]        U1 (advertised)
    SHARES   receive_shares            list[ShareDelivery]        U2 (sent shares)
    INPUTS   receive_masked_input      list[SurvivorSet]          U3 (sent masked inputs)
    AGREE    receive_survivor_vote     list[UnmaskRequest]        U3, certified by a quorum
    UNMASK   receive_unmask            AggregateResult            U4 (answered unmasking)
    DONE

A node that is silent in a stage drops out; a node whose message is refused (`RejectedMessage`,
naming it) is dropped too and the round goes on. Before masks exist (KEYS, SHARES) nodes whose
neighbourhood holds fewer than t live share holders are pruned; afterwards, if any node's masks
can no longer be removed (fewer than t of its share holders alive) the round raises `SecAggAbort`.
Each live node is asked for seed shares of its surviving neighbours and mask-key shares of its
dropped ones, never both for one peer. Keys are accepted only with their owner's signature, and
nobody is asked to unmask before `quorum` participants signed the same survivor set U3, which
every request carries: a dishonest aggregator cannot show two participants two different sets.
Each masked input comes with its sender's signed homomorphic commitment (`commitment.py`);
`finish_inputs` checks the inputs against them in one batch and drops, by name, a sender whose
input is not what it committed to, since the published transcript (`transcript()`, version 2)
holds the commitments and the integer sum of the inputs, not the inputs.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
import numpy.typing as npt

from consortium.protocol.secagg import commitment, crypto, field
from consortium.protocol.secagg.auth import (
    Verifier,
    input_statement,
    key_statement,
    survivors_statement,
)
from consortium.protocol.secagg.client import seed_commitment, share_digest, share_plaintext
from consortium.protocol.secagg.errors import (
    RejectedMessage,
    SecAggAbort,
    SecAggError,
    SecAggStateError,
)
from consortium.protocol.secagg.messages import (
    AdvertiseKeys,
    EncryptedShares,
    MaskedInput,
    Message,
    NeighbourKeys,
    ShareDelivery,
    SurvivorSet,
    SurvivorVote,
    UnmaskRequest,
    UnmaskResponse,
)
from consortium.protocol.secagg.params import SecAggParams
from consortium.protocol.secagg.quantize import dequantize
from consortium.protocol.secagg.transcript import Transcript, integer_sum, unmask_words

AEAD_TAG_BYTES = 16


class AggregatorStage(enum.Enum):
    KEYS = "keys"
    SHARES = "shares"
    INPUTS = "inputs"
    AGREE = "agree"
    UNMASK = "unmask"
    DONE = "done"


@dataclass(frozen=True)
class AggregateResult:
    words: npt.NDArray[np.uint32]  # sum of survivors' quantized inputs mod 2**32
    total: npt.NDArray[np.float64]  # the same sum, dequantized
    contributors: frozenset[str]
    dropped: frozenset[str]  # participants whose input is not in the sum


class SecAggAggregator:
    """Relays and sums; learns the sum of the survivors' inputs and nothing else."""

    def __init__(self, params: SecAggParams, verify: Verifier) -> None:
        self.params = params
        self._verify = verify
        self.stage = AggregatorStage.KEYS
        self.rejections: list[RejectedMessage] = []
        self._banned: set[str] = set()
        self._keys: dict[str, tuple[bytes, bytes]] = {}
        self._key_sigs: dict[str, bytes] = {}
        self._votes: dict[str, bytes] = {}  # survivor-set signatures
        self._statement: dict[str, object] = {}
        self._u1: frozenset[str] = frozenset()
        self._shares: dict[str, EncryptedShares] = {}
        self._u2: frozenset[str] = frozenset()
        self._inputs: dict[str, bytes] = {}
        self._input_commits: dict[str, tuple[bytes, bytes]] = {}  # (commitment, signature)
        self._sum: npt.NDArray[np.uint64] | None = None  # integer sum of U3's masked inputs
        self._u3: frozenset[str] = frozenset()
        self._requests: dict[str, UnmaskRequest] = {}
        self._responses: dict[str, UnmaskResponse] = {}
        self._seeds: dict[str, bytes] = {}
        self._dropped_keys: dict[str, bytes] = {}
        self._result: AggregateResult | None = None

    # -- bookkeeping -------------------------------------------------------------------------

    def _expect(self, stage: AggregatorStage) -> None:
        if self.stage is not stage:
            raise SecAggStateError(
                f"secagg aggregator: expected {stage.value}, at {self.stage.value}"
            )

    def _holders_alive(self, node: str, alive: Iterable[str]) -> int:
        live = set(alive)
        return len((self.params.neighbours(node) | {node}) & live)

    def _unrecoverable(self, targets: Iterable[str], alive: Iterable[str]) -> list[str]:
        live = set(alive)
        t = self.params.threshold
        return sorted(u for u in targets if self._holders_alive(u, live) < t)

    def _prune(self, alive: set[str]) -> frozenset[str]:
        """Drop nodes that cannot give t live holders their shares, until none is left to drop."""
        while True:
            weak = self._unrecoverable(alive, alive)
            if not weak:
                break
            alive -= set(weak)
        if len(alive) < self.params.threshold:
            raise SecAggAbort(
                f"only {len(alive)} participants remain, threshold is {self.params.threshold}"
            )
        return frozenset(alive)

    def _admit(
        self, sender: str, round_id: bytes, live: Iterable[str], seen: Iterable[str]
    ) -> None:
        if not self.params.is_participant(sender):
            err = RejectedMessage(sender, "not a participant of this round")
            self.rejections.append(err)
            raise err
        if sender in self._banned:
            self._reject(sender, "already dropped from this round")
        if round_id != self.params.round_id:
            self._reject(sender, "message belongs to another round")
        if sender not in set(live):
            self._reject(sender, f"not expected in stage {self.stage.value}")
        if sender in set(seen):
            self._reject(sender, "sent a second message in one stage")

    def _reject(self, sender: str, reason: str) -> NoReturn:
        """Record `sender` as dropped, check the round can still finish, raise naming it."""
        err = RejectedMessage(sender, reason)
        self.rejections.append(err)
        self._banned.add(sender)
        # Forget only this stage's message: keys and commitments of earlier stages are still
        # needed to check the secrets reconstructed for a dropped node.
        if self.stage is AggregatorStage.KEYS:
            self._keys.pop(sender, None)
        elif self.stage is AggregatorStage.SHARES:
            self._shares.pop(sender, None)
        elif self.stage is AggregatorStage.INPUTS:
            self._inputs.pop(sender, None)
            self._input_commits.pop(sender, None)
        elif self.stage is AggregatorStage.AGREE:
            self._votes.pop(sender, None)
        elif self.stage is AggregatorStage.UNMASK:
            self._responses.pop(sender, None)
        if self.stage in (AggregatorStage.INPUTS, AggregatorStage.UNMASK):
            pool = self._u3 if self.stage is AggregatorStage.UNMASK else self._u2
            lost = self._unrecoverable(self._u2, pool - self._banned)
            if lost:
                raise SecAggAbort(
                    f"after dropping {sender!r} ({reason}), masks of {lost} can no longer be "
                    f"removed with threshold {self.params.threshold}"
                ) from err
        raise err

    @property
    def dropped(self) -> frozenset[str]:
        """Participants known not to contribute (silent or refused) so far. Once masked inputs
        are in, a node that fails to help unmask still contributes and is not listed."""
        if self.stage in (AggregatorStage.AGREE, AggregatorStage.UNMASK, AggregatorStage.DONE):
            return frozenset(self.params.participants) - self._u3
        live = {
            AggregatorStage.KEYS: set(self.params.participants),
            AggregatorStage.SHARES: self._u1,
            AggregatorStage.INPUTS: self._u2,
        }[self.stage]
        return frozenset(self.params.participants) - (set(live) - self._banned)

    def receive(self, msg: Message) -> None:
        """Dispatch any client message to the receive_* of the current stage."""
        if isinstance(msg, AdvertiseKeys):
            self.receive_keys(msg)
        elif isinstance(msg, EncryptedShares):
            self.receive_shares(msg)
        elif isinstance(msg, MaskedInput):
            self.receive_masked_input(msg)
        elif isinstance(msg, SurvivorVote):
            self.receive_survivor_vote(msg)
        elif isinstance(msg, UnmaskResponse):
            self.receive_unmask(msg)
        else:
            raise SecAggError(f"aggregator does not accept {type(msg).__name__} messages")

    # -- stage 0: keys -------------------------------------------------------------------------

    def receive_keys(self, msg: AdvertiseKeys) -> None:
        self._expect(AggregatorStage.KEYS)
        self._admit(msg.sender, msg.round_id, self.params.participants, self._keys)
        if len(msg.enc_key) != crypto.KEY_BYTES or len(msg.mask_key) != crypto.KEY_BYTES:
            self._reject(msg.sender, "public keys must be 32 bytes")
        if msg.enc_key == msg.mask_key:
            self._reject(msg.sender, "encryption and mask keys must differ")
        statement = key_statement(msg.round_id, msg.sender, msg.enc_key, msg.mask_key)
        if not self._verify(msg.sender, statement, msg.signature):
            self._reject(msg.sender, "keys not signed by their sender")
        self._keys[msg.sender] = (msg.enc_key, msg.mask_key)
        self._key_sigs[msg.sender] = msg.signature

    def finish_keys(self) -> list[NeighbourKeys]:
        self._expect(AggregatorStage.KEYS)
        self._u1 = self._prune(set(self._keys) - self._banned)
        self.stage = AggregatorStage.SHARES
        rid = self.params.round_id
        return [
            NeighbourKeys(
                rid,
                u,
                tuple(
                    (v, *self._keys[v], self._key_sigs[v])
                    for v in sorted(self.params.neighbours(u) & self._u1)
                ),
            )
            for u in sorted(self._u1)
        ]

    # -- stage 1: shares -----------------------------------------------------------------------

    def receive_shares(self, msg: EncryptedShares) -> None:
        self._expect(AggregatorStage.SHARES)
        u = msg.sender
        self._admit(u, msg.round_id, self._u1, self._shares)
        expected = self.params.neighbours(u) & self._u1
        if {v for v, _ in msg.ciphertexts} != expected:
            self._reject(u, "shares are not addressed to exactly its live neighbours")
        blank = bytes(field.SHARE_BYTES)
        for v, ct in msg.ciphertexts:
            size = len(share_plaintext(u, v, blank, blank)) + AEAD_TAG_BYTES
            if len(ct) != size:
                self._reject(u, f"encrypted share for {v!r} must be {size} bytes")
        if len(msg.seed_commitment) != 32:
            self._reject(u, "seed commitment must be 32 bytes")
        commits = dict(msg.share_commitments)
        if set(commits) != expected | {u} or any(len(c) != 64 for c in commits.values()):
            self._reject(u, "share commitments are not 64 bytes for exactly its share holders")
        self._shares[u] = msg

    def finish_shares(self) -> list[ShareDelivery]:
        self._expect(AggregatorStage.SHARES)
        self._u2 = self._prune(set(self._shares) - self._banned)
        self.stage = AggregatorStage.INPUTS
        rid = self.params.round_id
        by_sender = {u: dict(self._shares[u].ciphertexts) for u in self._u2}
        out = []
        for v in sorted(self._u2):
            senders = sorted(self.params.neighbours(v) & self._u2)
            cts = tuple((u, by_sender[u][v]) for u in senders)
            commits = tuple((u, self._commitment(u, v)) for u in senders)
            out.append(ShareDelivery(rid, v, cts, commits))
        return out

    def _commitment(self, dealer: str, holder: str) -> bytes:
        return dict(self._shares[dealer].share_commitments)[holder]

    # -- stage 2: masked inputs ----------------------------------------------------------------

    def receive_masked_input(self, msg: MaskedInput) -> None:
        self._expect(AggregatorStage.INPUTS)
        u = msg.sender
        self._admit(u, msg.round_id, self._u2, self._inputs)
        size = len(msg.vector)
        if size > self.params.max_input_bytes:
            self._reject(u, f"masked input of {size} bytes exceeds {self.params.max_input_bytes}")
        if size != 4 * self.params.vector_length:
            self._reject(
                u, f"masked input must be {4 * self.params.vector_length} bytes, got {size}"
            )
        try:
            commitment.parse(msg.commitment)
        except SecAggError as exc:
            self._reject(u, f"masked input's commitment is unusable: {exc}")
        seed = self._shares[u].seed_commitment
        statement = input_statement(msg.round_id, u, msg.commitment, seed)
        if not self._verify(u, statement, msg.signature):
            self._reject(u, "masked input's commitment not signed by its sender")
        self._inputs[u] = msg.vector
        self._input_commits[u] = (msg.commitment, msg.signature)

    def _check_commitments(self) -> None:
        """Refuse, by name, senders whose masked input is not what they signed a commitment to:
        one multi-scalar multiplication for the whole sum, one per input only if that fails (a
        wrong commitment would make the published sum fail every voter's check)."""
        live = sorted(set(self._inputs) - self._banned)
        d = self.params.vector_length
        total = integer_sum({u: self._inputs[u] for u in live}, d)
        if commitment.sum_matches(total, (self._input_commits[u][0] for u in live)):
            return
        for u in live:
            words = np.frombuffer(self._inputs[u], dtype="<u4").astype(np.uint32)
            if commitment.commit(words) != commitment.parse(self._input_commits[u][0]):
                # Recorded in `rejections`; the round goes on without it.
                with contextlib.suppress(RejectedMessage):
                    self._reject(u, "masked input does not match its signed commitment")

    def finish_inputs(self) -> list[SurvivorSet]:
        self._expect(AggregatorStage.INPUTS)
        self._check_commitments()
        u3 = set(self._inputs) - self._banned
        lost = self._unrecoverable(self._u2, u3)
        if lost:
            raise SecAggAbort(
                f"masks of {lost} cannot be removed: fewer than t={self.params.threshold} of "
                "their share holders sent masked inputs"
            )
        if len(u3) < self.params.min_survivors:
            raise SecAggAbort(
                f"only {len(u3)} masked inputs, the floor is {self.params.min_survivors}"
            )
        self._u3 = frozenset(u3)
        # One statement object for every vote: verifiers encode it once.
        self._statement = survivors_statement(self.params.round_id, self._u3)
        self.stage = AggregatorStage.AGREE
        rid, survivors = self.params.round_id, tuple(sorted(self._u3))
        return [SurvivorSet(rid, v, survivors) for v in survivors]

    # -- stage 3: agreeing on the survivors ------------------------------------------------------

    def receive_survivor_vote(self, msg: SurvivorVote) -> None:
        self._expect(AggregatorStage.AGREE)
        v = msg.sender
        self._admit(v, msg.round_id, self._u3, self._votes)
        if not self._verify(v, self._statement, msg.signature):
            self._reject(v, "survivor-set signature does not verify")
        self._votes[v] = msg.signature

    def finish_agreement(self) -> list[UnmaskRequest]:
        """Unmask requests carrying the certified set, once a quorum signed it."""
        self._expect(AggregatorStage.AGREE)
        votes = {v: s for v, s in self._votes.items() if v not in self._banned}
        if len(votes) < self.params.quorum:
            raise SecAggAbort(
                f"only {len(votes)} participants signed the survivor set, quorum is "
                f"{self.params.quorum}"
            )
        self.stage = AggregatorStage.UNMASK
        dropped = self._u2 - self._u3
        rid, agreed = self.params.round_id, tuple(sorted(self._u3))
        certificate = tuple(sorted(votes.items()))
        for v in agreed:
            nb = self.params.neighbours(v)
            self._requests[v] = UnmaskRequest(
                rid,
                v,
                tuple(sorted((nb & self._u3) | {v})),
                tuple(sorted(nb & dropped)),
                agreed,
                certificate,
            )
        return list(self._requests.values())

    # -- stage 4: unmasking --------------------------------------------------------------------

    def receive_unmask(self, msg: UnmaskResponse) -> None:
        self._expect(AggregatorStage.UNMASK)
        v = msg.sender
        self._admit(v, msg.round_id, self._u3, self._responses)
        req = self._requests[v]
        if (
            tuple(p for p, _ in msg.seed_shares) != req.survivors
            or tuple(p for p, _ in msg.key_shares) != req.dropped
        ):
            self._reject(v, "revealed shares do not match the request")
        shares = [s for _, s in msg.seed_shares + msg.key_shares]
        if any(len(s) != field.SHARE_BYTES for s in shares):
            self._reject(v, f"every share must be {field.SHARE_BYTES} bytes")
        # A revealed share must be the one its dealer committed to: a lie is refused by name and
        # the sum is rebuilt from the other holders' shares.
        for half, kind, revealed in ((0, "seed", msg.seed_shares), (1, "key", msg.key_shares)):
            for dealer, share in revealed:
                committed = self._commitment(dealer, v)[32 * half : 32 * half + 32]
                if share_digest(self.params.round_id, dealer, v, kind, share) != committed:
                    self._reject(v, f"revealed a {kind} share of {dealer!r} it was not dealt")
        self._responses[v] = msg

    def _reconstruct(self, u: str, kind: int) -> bytes:
        """Secret of `u` from t revealed shares (kind 0: seed share, 1: mask-key share)."""
        points: dict[int, bytes] = {}
        for v in sorted((self.params.neighbours(u) | {u}) & self._responses.keys()):
            resp = self._responses[v]
            revealed = resp.seed_shares if kind == 0 else resp.key_shares
            points[self.params.x_of(v)] = dict(revealed)[u]
            if len(points) == self.params.threshold:
                break
        try:
            return field.combine(points)
        except SecAggError as exc:
            raise SecAggAbort(f"cannot reconstruct the secret of {u!r}: {exc}") from exc

    def finish(self) -> AggregateResult:
        self._expect(AggregatorStage.UNMASK)
        alive = set(self._responses) - self._banned
        lost = self._unrecoverable(self._u2, alive)
        if lost:
            raise SecAggAbort(
                f"masks of {lost} cannot be removed: fewer than t={self.params.threshold} of "
                "their share holders answered the unmask request"
            )
        rid = self.params.round_id
        for u in sorted(self._u3):
            seed = self._reconstruct(u, 0)
            if seed_commitment(rid, u, seed) != self._shares[u].seed_commitment:
                raise SecAggAbort(f"reconstructed seed of {u!r} does not match its commitment")
            self._seeds[u] = seed
        for u in sorted(self._u2 - self._u3):
            secret = self._reconstruct(u, 1)
            if crypto.public_bytes(secret) != self._keys[u][1]:
                raise SecAggAbort(f"reconstructed mask key of {u!r} does not match its public key")
            self._dropped_keys[u] = secret
        self._sum = integer_sum({u: self._inputs[u] for u in self._u3}, self.params.vector_length)
        masked = (self._sum & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        mask_keys = {u: self._keys[u][1] for u in self._u2}
        words = unmask_words(
            self.params, masked, sorted(self._u3), self._seeds, self._dropped_keys, mask_keys
        )
        self.stage = AggregatorStage.DONE
        self._result = AggregateResult(
            words,
            dequantize(words, self.params.scale),
            frozenset(self._u3),
            frozenset(self.params.participants) - self._u3,
        )
        return self._result

    def transcript(self) -> Transcript:
        """What is published so any member or auditor can check the sum (transcript v2)."""
        self._expect(AggregatorStage.DONE)
        assert self._result is not None and self._sum is not None
        u3 = sorted(self._u3)
        return Transcript(
            round_id=self.params.round_id,
            masked_sum=commitment.encode_sum(self._sum, commitment.sum_width(len(u3))),
            commitments={u: self._input_commits[u][0] for u in u3},
            input_signatures={u: self._input_commits[u][1] for u in u3},
            seed_commitments={u: self._shares[u].seed_commitment for u in u3},
            keys={u: (*self._keys[u], self._key_sigs[u]) for u in sorted(self._u2)},
            revealed_seeds=dict(sorted(self._seeds.items())),
            revealed_mask_keys=dict(sorted(self._dropped_keys.items())),
        )

    def masked_input(self, node: str) -> bytes:
        """The masked input `node` sent (what the leader sees; no longer published)."""
        return self._inputs[node]

    @property
    def result(self) -> AggregateResult:
        """The unmasked aggregate (after `finish`)."""
        self._expect(AggregatorStage.DONE)
        assert self._result is not None
        return self._result
