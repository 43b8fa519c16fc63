"""Ledger entries the members agree to outside rounds (a run's configuration), sans-I/O.

A member proposes an entry and the tree head "ledger + entry"; every member checks it against its
own ledger and its own rules and either cosigns the head (the vote is persisted first, and never
contradicts a vote it cast at the same ledger size) or refuses with a reason. With a quorum of
cosignatures the proposer sends the commit; every member checks the cosignatures and appends.
So no run starts that a quorum of members did not accept, each by its own policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from consortium.core.encoding import Domain
from consortium.core.errors import ConsortiumError
from consortium.core.genesis import Genesis
from consortium.core.identity import NodeIdentity, valid_signatures
from consortium.ledger.entries import Entry, make_record
from consortium.ledger.frontier import Frontier
from consortium.ledger.heads import TreeHead
from consortium.protocol.messages import Proposal

#: A refusal that says only that the proposer's ledger and the member's differ in size: a round
#: committed while the entry was proposed. The proposer may propose again at the new size.
STALE_HEAD = "the proposed head is not this ledger"


class AgreementRefused(ConsortiumError):
    """A member refuses a proposed entry; the message says why."""


def propose(
    identity: NodeIdentity,
    genesis: Genesis,
    frontier: Frontier,
    kind: str,
    body: dict[str, Any],
    time_ms: int,
    proofs: tuple[bytes, ...] = (),
) -> Proposal:
    """`proofs`: artifacts the entry lists that voters need to check it (a run-final entry's
    proofs of evaluation); they travel with the proposal and its commit."""
    entry = make_record(identity, kind, body, time_ms, genesis)
    data = entry.to_bytes()
    root = frontier.append(data).root()
    return Proposal(data, frontier.size + 1, root, time_ms, b"", proofs=proofs)


def check(p: Proposal, genesis: Genesis, frontier: Frontier, kinds: tuple[str, ...]) -> Entry:
    """The proposed entry, if it is a member-signed entry of one of `kinds` and the head is
    `frontier` plus it; AgreementRefused otherwise."""
    try:
        entry = Entry.from_bytes(p.entry)
        entry.verify(genesis)
    except ConsortiumError as exc:
        raise AgreementRefused(f"the proposed entry does not verify: {exc}") from exc
    if entry.kind not in kinds:
        raise AgreementRefused(f"the proposed entry is a {entry.kind!r}, not one of {kinds}")
    if p.size != frontier.size + 1 or p.root != frontier.append(p.entry).root():
        raise AgreementRefused(f"{STALE_HEAD} (size {frontier.size}) plus the entry")
    return entry


def cosign(
    identity: NodeIdentity, genesis: Genesis, p: Proposal, prior_root: bytes | None
) -> bytes:
    """This member's cosignature of the proposed head; refuses a second head of one size."""
    if prior_root is not None and prior_root != p.root:
        raise AgreementRefused(
            f"this member already cosigned another head of size {p.size} (would equivocate)"
        )
    return TreeHead(p.size, p.root, p.time).sign(identity, genesis).signature


def refusal_statement(p: Proposal) -> dict[str, Any]:
    """What a member signs when it refuses a proposed entry: with enough of these the proposal
    provably cannot become final, and voters may cosign another entry at that ledger size."""
    return {"refuse": p.root, "size": p.size}


def abandoned(p: Proposal, genesis: Genesis, refusals: Mapping[str, bytes], colluders: int) -> bool:
    """Whether signed refusals prove `p` can never reach quorum, even if `colluders` of the
    refusers lie (a refusal and a cosignature of one head are evidence against their signer)."""
    keys = {m.node_id: m.public_key for m in genesis.members}
    statement, digest = refusal_statement(p), genesis.digest()
    valid = valid_signatures(keys, Domain.MESSAGE, statement, refusals, digest)
    return len(genesis.members) - len(valid) + colluders < genesis.quorum


def valid_cosignatures(
    p: Proposal, genesis: Genesis, cosignatures: Mapping[str, bytes]
) -> dict[str, bytes]:
    """The cosignatures of the proposed head that verify; AgreementRefused below quorum."""
    keys = {m.node_id: m.public_key for m in genesis.members}
    head = TreeHead(p.size, p.root, p.time).body()
    valid = valid_signatures(keys, Domain.TREE_HEAD, head, cosignatures, genesis.digest())
    if len(valid) < genesis.quorum:
        raise AgreementRefused(f"{len(valid)} valid cosignatures, the quorum is {genesis.quorum}")
    return valid
