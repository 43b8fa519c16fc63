# pragma version 0.4.3
# @title TreeHeadAnchor
# @notice Anchors one consortium's cosigned ledger tree heads (size, root). Only the members
#         fixed at deployment may anchor, and each anchored size must exceed the previous one,
#         so the chain holds a strictly growing sequence of checkpoints an auditor can compare
#         the local ledger against.

MAX_MEMBERS: constant(uint256) = 256
MAX_PAGE: constant(uint256) = 256

struct TreeHead:
    size: uint256
    root: bytes32
    submitter: address

event Anchored:
    size: indexed(uint256)
    root: bytes32
    submitter: indexed(address)

genesis_digest: public(bytes32)
is_member: public(HashMap[address, bool])
members: public(DynArray[address, MAX_MEMBERS])
count: public(uint256)
_heads: HashMap[uint256, TreeHead]


@deploy
def __init__(members: DynArray[address, MAX_MEMBERS], genesis_digest: bytes32):
    assert len(members) > 0, "no members"
    for m: address in members:
        assert m != empty(address), "zero address member"
        assert not self.is_member[m], "duplicate member"
        self.is_member[m] = True
    self.members = members
    self.genesis_digest = genesis_digest


@external
def anchor(size: uint256, root: bytes32):
    assert self.is_member[msg.sender], "not a member"
    n: uint256 = self.count
    last: uint256 = 0
    if n > 0:
        last = self._heads[n - 1].size
    assert size > last, "size must grow"
    self._heads[n] = TreeHead(size=size, root=root, submitter=msg.sender)
    self.count = n + 1
    log Anchored(size=size, root=root, submitter=msg.sender)


@view
@external
def member_count() -> uint256:
    return len(self.members)


@view
@external
def head(i: uint256) -> TreeHead:
    assert i < self.count, "no such head"
    return self._heads[i]


@view
@external
def latest() -> TreeHead:
    assert self.count > 0, "nothing anchored"
    return self._heads[self.count - 1]


@view
@external
def heads(start: uint256, limit: uint256) -> DynArray[TreeHead, MAX_PAGE]:
    # One call returns a page of heads, so reading the whole history costs count/MAX_PAGE calls.
    out: DynArray[TreeHead, MAX_PAGE] = []
    for i: uint256 in range(start, start + MAX_PAGE, bound=MAX_PAGE):
        if i >= self.count or len(out) >= limit:
            break
        out.append(self._heads[i])
    return out
