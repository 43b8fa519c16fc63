"""SecAgg+ client as a sans-I/O state machine.

Theory of operation (one round, Bell et al. 2020 over Bonawitz et al. 2017):

    stage      method                      takes            returns
    ADVERTISE  advertise_keys()            -                AdvertiseKeys
    KEYS       receive_neighbour_keys(m)   NeighbourKeys    EncryptedShares
    SHARES     receive_shares(m)           ShareDelivery    None
    INPUT      masked_input(words)         uint32 vector    MaskedInput (+ signed commitment)
    AGREE      receive_survivor_set(m)     SurvivorSet      SurvivorVote
    UNMASK     receive_unmask_request(m)   UnmaskRequest    UnmaskResponse
    DONE       -

Against a dishonest aggregator (any member may lead): neighbours' keys are used only with their
owners' signatures (`auth`); the client signs at most one survivor set, and only one that holds
at least `min_survivors` participants, itself, and t of its own share holders; it reveals only on
a certificate of `quorum` participants' signatures on that set, and only what the set implies.

The client holds two X25519 key pairs (one to encrypt shares, one to derive pairwise masks) and a
self-mask seed b. It Shamir-shares b and the mask private key among itself and the neighbours
that advertised keys (threshold t), masks its input with PRG(b) and +/-PRG(s_uv) for each
neighbour v that sent it shares, and at the end reveals, per peer, either the seed share (peer
survived) or the mask-key share (peer dropped) -- never both, which would unmask the peer.
"""

from __future__ import annotations

import enum
import hashlib
import os
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from consortium.protocol.secagg import commitment, crypto, field
from consortium.protocol.secagg.auth import (
    Signer,
    Verifier,
    input_statement,
    key_statement,
    survivors_statement,
)
from consortium.protocol.secagg.errors import (
    DoubleRevealError,
    RejectedMessage,
    SecAggAbort,
    SecAggError,
    SecAggStateError,
)
from consortium.protocol.secagg.messages import (
    AdvertiseKeys,
    EncryptedShares,
    MaskedInput,
    NeighbourKeys,
    ShareDelivery,
    SurvivorSet,
    SurvivorVote,
    UnmaskRequest,
    UnmaskResponse,
)
from consortium.protocol.secagg.params import SecAggParams
from consortium.protocol.secagg.quantize import quantize

COMMIT_LABEL = "consortium/secagg/v1/seed-commitment"
SHARE_LABEL = "consortium/secagg/v1/share-commitment"


class ClientStage(enum.Enum):
    ADVERTISE = "advertise"
    KEYS = "keys"
    SHARES = "shares"
    INPUT = "input"
    AGREE = "agree"
    UNMASK = "unmask"
    DONE = "done"


def seed_commitment(round_id: bytes, node: str, seed: bytes) -> bytes:
    """SHA-256 commitment to a self-mask seed; lets anyone check a reconstructed seed."""
    return hashlib.sha256(crypto.frame(COMMIT_LABEL, round_id, node, seed)).digest()


def share_commitment(
    round_id: bytes, dealer: str, holder: str, seed_share: bytes, key_share: bytes
) -> bytes:
    """64 bytes: SHA-256 commitments to the seed share and the mask-key share `holder` holds of
    `dealer`'s secrets (each share is a random 521-bit field element, so this hides it)."""
    return share_digest(round_id, dealer, holder, "seed", seed_share) + share_digest(
        round_id, dealer, holder, "key", key_share
    )


def share_digest(round_id: bytes, dealer: str, holder: str, kind: str, share: bytes) -> bytes:
    """The half of a share commitment for one share ("seed" or "key")."""
    return hashlib.sha256(crypto.frame(SHARE_LABEL, kind, round_id, dealer, holder, share)).digest()


def share_plaintext(sender: str, recipient: str, seed_share: bytes, key_share: bytes) -> bytes:
    """What one encrypted share carries: both ids (checked on receipt) and the two shares."""
    return crypto.frame(sender, recipient, seed_share, key_share)


class SecAggClient:
    """One participant's side of a SecAgg+ round. Never does I/O; raise = refuse to go on."""

    def __init__(
        self,
        params: SecAggParams,
        node_id: str,
        *,
        signer: Signer,
        verify: Verifier,
        rng: np.random.Generator | None = None,
        random_bytes: Callable[[int], bytes] | None = None,
    ) -> None:
        if not params.is_participant(node_id):
            raise SecAggError(f"{node_id!r} is not a participant of this round")
        self.params = params
        self.node_id = node_id
        self._sign = signer
        self._verify = verify
        self.signed_set: tuple[str, ...] | None = None  # the one survivor set it signed
        # A seeded Generator makes simulations reproducible; real nodes use the OS CSPRNG.
        fallback = rng.bytes if rng is not None else os.urandom
        self._random: Callable[[int], bytes] = random_bytes or fallback
        self._enc_secret = self._random(crypto.KEY_BYTES)
        self._mask_secret = self._random(crypto.KEY_BYTES)
        self._seed = self._random(crypto.KEY_BYTES)
        self._enc_key = crypto.private_key(self._enc_secret)
        self._mask_key = crypto.private_key(self._mask_secret)
        self.stage = ClientStage.ADVERTISE
        self._peers: dict[str, tuple[bytes, bytes]] = {}  # neighbour -> (enc_pk, mask_pk)
        self._held: dict[str, tuple[bytes, bytes]] = {}  # peer -> (seed share, key share)
        self._pair_seeds: dict[str, bytes] = {}  # neighbour in U2 -> pairwise mask seed
        self._revealed: dict[str, str] = {}  # peer -> "seed" | "key"

    def _expect(self, stage: ClientStage) -> None:
        if self.stage is not stage:
            raise SecAggStateError(
                f"secagg client {self.node_id}: expected stage {stage.value}, at {self.stage.value}"
            )

    def _check_round(self, round_id: bytes, recipient: str, origin: str) -> None:
        if round_id != self.params.round_id:
            raise RejectedMessage(origin, "message belongs to another round")
        if recipient != self.node_id:
            raise RejectedMessage(origin, f"message is addressed to {recipient!r}")

    def advertise_keys(self) -> AdvertiseKeys:
        self._expect(ClientStage.ADVERTISE)
        self.stage = ClientStage.KEYS
        rid = self.params.round_id
        enc = self._enc_key.public_key().public_bytes_raw()
        mask = self._mask_key.public_key().public_bytes_raw()
        sig = self._sign(key_statement(rid, self.node_id, enc, mask))
        return AdvertiseKeys(rid, self.node_id, enc, mask, sig)

    def receive_neighbour_keys(self, msg: NeighbourKeys) -> EncryptedShares:
        self._expect(ClientStage.KEYS)
        self._check_round(msg.round_id, msg.recipient, "aggregator")
        mine = self.params.neighbours(self.node_id)
        peers: dict[str, tuple[bytes, bytes]] = {}  # committed only once all keys check out
        for node, enc, mask, sig in msg.keys:
            if node not in mine:
                raise RejectedMessage("aggregator", f"{node!r} is not a neighbour of ours")
            if len(enc) != crypto.KEY_BYTES or len(mask) != crypto.KEY_BYTES or enc == mask:
                raise RejectedMessage(node, "public keys must be two distinct 32-byte keys")
            if not self._verify(node, key_statement(msg.round_id, node, enc, mask), sig):
                raise RejectedMessage(
                    "aggregator", f"relayed keys for {node!r} that {node!r} did not sign"
                )
            peers[node] = (enc, mask)
        self._peers = peers
        holders = [*peers, self.node_id]
        t = self.params.threshold
        if len(holders) < t:
            raise SecAggAbort(f"only {len(holders)} share holders remain, threshold is {t}")
        xs = [self.params.x_of(h) for h in holders]
        seed_shares = field.split(self._seed, xs, t, self._random)
        key_shares = field.split(self._mask_secret, xs, t, self._random)
        rid = self.params.round_id
        ciphertexts: list[tuple[str, bytes]] = []
        commitments = tuple(
            sorted(
                (h, share_commitment(rid, self.node_id, h, seed_shares[x], key_shares[x]))
                for h, x in zip(holders, xs, strict=True)
            )
        )
        for holder, x in zip(holders, xs, strict=True):
            if holder == self.node_id:
                self._held[holder] = (seed_shares[x], key_shares[x])
                continue
            info = crypto.share_info(rid, self.node_id, holder)
            key = crypto.agree(self._enc_key, self._peers[holder][0], info)
            plain = share_plaintext(self.node_id, holder, seed_shares[x], key_shares[x])
            ct = crypto.seal(key, plain, crypto.share_ad(rid, self.node_id, holder))
            ciphertexts.append((holder, ct))
        self.stage = ClientStage.SHARES
        return EncryptedShares(
            rid,
            self.node_id,
            seed_commitment(rid, self.node_id, self._seed),
            tuple(sorted(ciphertexts)),
            commitments,
        )

    def receive_shares(self, msg: ShareDelivery) -> None:
        """Decrypt the shares neighbours sent; a share that fails AEAD is refused, naming its
        sender (the client cannot mask consistently without it, so the round stops here)."""
        self._expect(ClientStage.SHARES)
        self._check_round(msg.round_id, msg.recipient, "aggregator")
        rid = self.params.round_id
        received: dict[str, tuple[bytes, bytes]] = {}
        committed = dict(msg.share_commitments)
        for sender, ct in msg.ciphertexts:
            if sender not in self._peers:
                raise RejectedMessage(sender, "sent shares but did not advertise keys to us")
            info = crypto.share_info(rid, sender, self.node_id)
            key = crypto.agree(self._enc_key, self._peers[sender][0], info)
            plain = crypto.open_sealed(key, ct, crypto.share_ad(rid, sender, self.node_id))
            if plain is None:
                raise RejectedMessage(sender, "encrypted share fails authentication")
            body = crypto.unframe(plain, 4)
            if (
                body is None
                or body[:2] != [sender.encode(), self.node_id.encode()]
                or not all(len(s) == field.SHARE_BYTES for s in body[2:])
            ):
                raise RejectedMessage(sender, "share plaintext is malformed")
            # The dealer's commitment is what a revealed share is checked against later: if it
            # does not match what the dealer sent us, an honest reveal would look like a lie.
            if committed.get(sender) != share_commitment(
                rid, sender, self.node_id, body[2], body[3]
            ):
                raise RejectedMessage(sender, "its shares do not match its share commitments")
            received[sender] = (body[2], body[3])
        t = self.params.threshold
        if len(received) + 1 < t:
            raise SecAggAbort(f"only {len(received) + 1} of our share holders remain, need {t}")
        self._held.update(received)
        # The neighbours that sent us shares are exactly those we mask with (U2 ∩ N(u)); derive
        # the pairwise seeds now so masking is pure keystream work.
        for peer in sorted(received):
            info = crypto.mask_info(rid, self.node_id, peer)
            self._pair_seeds[peer] = crypto.agree(self._mask_key, self._peers[peer][1], info)
        self.stage = ClientStage.INPUT

    def masked_input(self, words: npt.NDArray[np.uint32]) -> MaskedInput:
        """Mask an already quantized update (uint32 words, length d)."""
        self._expect(ClientStage.INPUT)
        d = self.params.vector_length
        if words.dtype != np.uint32 or words.shape != (d,):
            raise SecAggError(f"input must be a uint32 vector of length {d}")
        acc = np.array(words, dtype=np.uint32, copy=True)
        prg = crypto.MaskPrg(d)
        prg.add(acc, self._seed, +1)
        for peer, seed in sorted(self._pair_seeds.items()):
            prg.add(acc, seed, +1 if self.node_id < peer else -1)
        rid = self.params.round_id
        vector_commitment = commitment.commit_words(acc)
        seed_commit = seed_commitment(rid, self.node_id, self._seed)
        sig = self._sign(input_statement(rid, self.node_id, vector_commitment, seed_commit))
        self.stage = ClientStage.AGREE
        return MaskedInput(
            rid, self.node_id, acc.astype("<u4", copy=False).tobytes(), vector_commitment, sig
        )

    def mask_update(self, update: npt.ArrayLike, rng: np.random.Generator) -> MaskedInput:
        """Clip, quantize (stochastic rounding with `rng`) and mask a float update."""
        p = self.params
        return self.masked_input(quantize(update, p.clip, p.scale, rng))

    def receive_survivor_set(self, msg: SurvivorSet) -> SurvivorVote:
        """Sign the survivor set, once, if it is one this client may let the sum be unmasked for."""
        self._expect(ClientStage.AGREE)
        self._check_round(msg.round_id, msg.recipient, "aggregator")
        self._check_set(msg.survivors)
        self.signed_set = msg.survivors
        self.stage = ClientStage.UNMASK
        statement = survivors_statement(msg.round_id, msg.survivors)
        return SurvivorVote(msg.round_id, self.node_id, self._sign(statement))

    def _check_set(self, survivors: tuple[str, ...]) -> None:
        p = self.params
        if any(not p.is_participant(s) for s in survivors):
            raise RejectedMessage("aggregator", "survivor set names a non-participant")
        if self.node_id not in survivors:
            raise RejectedMessage("aggregator", "survivor set leaves out this node's masked input")
        if len(survivors) < p.min_survivors:
            raise RejectedMessage(
                "aggregator",
                f"survivor set of {len(survivors)} is below the floor of {p.min_survivors}",
            )
        holders = (p.neighbours(self.node_id) & set(survivors)) | {self.node_id}
        if len(holders) < p.threshold:
            raise RejectedMessage(
                "aggregator",
                f"only {len(holders)} of this node's share holders survive, threshold is "
                f"{p.threshold}",
            )

    def _check_certificate(self, msg: UnmaskRequest) -> None:
        """The set must be the one this client signed, certified by `quorum` participants."""
        if msg.agreed != self.signed_set:
            raise RejectedMessage("aggregator", "unmask request for a set this node did not sign")
        statement = survivors_statement(msg.round_id, msg.agreed)
        # Valid signatures of distinct participants, counted until `quorum`: the rule needs no
        # more, and verifying the rest of an n-signature certificate cost every member n/3
        # verifications more (a third of them per round at n = 100).
        signers: set[str] = set()
        for node, sig in msg.certificate:
            if len(signers) >= self.params.quorum:
                break
            if (
                node not in signers
                and self.params.is_participant(node)
                and self._verify(node, statement, sig)
            ):
                signers.add(node)
        if len(signers) < self.params.quorum:
            raise RejectedMessage(
                "aggregator",
                f"survivor set certified by {len(signers)} participants, quorum is "
                f"{self.params.quorum}",
            )
        nb = self.params.neighbours(self.node_id)
        agreed = set(msg.agreed)
        if (
            set(msg.survivors) != (nb & agreed) | {self.node_id}
            or set(msg.dropped) != set(self._pair_seeds) - agreed
        ):
            raise RejectedMessage("aggregator", "unmask request does not follow the agreed set")

    def receive_unmask_request(self, msg: UnmaskRequest) -> UnmaskResponse:
        self._expect(ClientStage.UNMASK)
        self._check_round(msg.round_id, msg.recipient, "aggregator")
        self._check_certificate(msg)
        survivors, dropped = set(msg.survivors), set(msg.dropped)
        both = survivors & dropped
        if both:
            raise DoubleRevealError(
                f"aggregator asked for both secrets of {sorted(both)}; refusing to reveal"
            )
        if self.node_id in dropped or self.node_id not in survivors:
            raise SecAggError("unmask request lists this (live) node as dropped")
        unknown = (survivors - self._held.keys()) | (dropped - self._pair_seeds.keys())
        if unknown:
            raise SecAggError(f"unmask request names peers we hold no shares of: {sorted(unknown)}")
        t = self.params.threshold
        if len(survivors) < t:
            raise SecAggAbort(f"only {len(survivors)} of our neighbourhood survived, need {t}")
        for peers, kind in ((survivors, "seed"), (dropped, "key")):
            for peer in peers:
                if self._revealed.get(peer, kind) != kind:
                    raise DoubleRevealError(f"already revealed the other secret of {peer!r}")
        for peer in survivors:
            self._revealed[peer] = "seed"
        for peer in dropped:
            self._revealed[peer] = "key"
        self.stage = ClientStage.DONE
        return UnmaskResponse(
            self.params.round_id,
            self.node_id,
            tuple((p, self._held[p][0]) for p in sorted(survivors)),
            tuple((p, self._held[p][1]) for p in sorted(dropped)),
        )
