"""Chain anchoring: the Vyper contract on py-evm, accounts, persistence, and the audit checks."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from consortium.chain import contract as contract_mod
from consortium.chain.accounts import (
    account_from_keystore,
    bind_account,
    checksum,
    derive_account,
    verify_account_binding,
)
from consortium.chain.check import check_anchored, check_deployment
from consortium.chain.client import AnchorChain, AnchoredHead
from consortium.chain.contract import compiled_contract
from consortium.core.errors import ChainError, IdentityError
from consortium.core.identity import NodeIdentity

GENESIS = hashlib.sha256(b"genesis").digest()


def root(i: int) -> bytes:
    return hashlib.sha256(b"root %d" % i).digest()


@pytest.fixture(scope="module")
def members() -> list[LocalAccount]:
    return [derive_account(NodeIdentity.generate(f"node{i}")) for i in range(3)]


@pytest.fixture
def chain(tmp_path: Path, members: list[LocalAccount]) -> Iterator[AnchorChain]:
    ch = AnchorChain.embedded(tmp_path / "chain")
    ch.deploy([m.address for m in members], GENESIS)
    yield ch
    ch.close()


# -- accounts ----------------------------------------------------------------------------------


def test_account_is_derived_deterministically_from_the_identity(tmp_path: Path) -> None:
    a, b = NodeIdentity.generate("a"), NodeIdentity.generate("b")
    assert derive_account(a).address == derive_account(a).address
    assert derive_account(a).address != derive_account(b).address
    # the same identity reloaded from disk gives the same account
    a.save(tmp_path / "a")
    assert derive_account(NodeIdentity.load(tmp_path / "a")).address == derive_account(a).address


def test_account_binding_verifies_only_for_its_node_and_address() -> None:
    ident, other = NodeIdentity.generate("a"), NodeIdentity.generate("b")
    address = derive_account(ident).address
    sig = bind_account(ident, address)
    verify_account_binding(ident.public_key, ident.node_id, address.lower(), sig)
    with pytest.raises(IdentityError, match="not bound"):
        verify_account_binding(ident.public_key, ident.node_id, derive_account(other).address, sig)
    with pytest.raises(IdentityError, match="not bound"):
        verify_account_binding(other.public_key, other.node_id, address, sig)
    with pytest.raises(IdentityError, match="not an Ethereum address"):
        verify_account_binding(ident.public_key, ident.node_id, "0x1234", sig)


def test_keystore_account(tmp_path: Path) -> None:
    acct = Account.create()
    keyfile = Account.encrypt(acct.key, "pw", kdf="pbkdf2", iterations=2)
    path = tmp_path / "key.json"
    path.write_text(json.dumps(keyfile))
    assert account_from_keystore(path, "pw").address == acct.address
    with pytest.raises(IdentityError, match="wrong passphrase"):
        account_from_keystore(path, "nope")
    with pytest.raises(IdentityError, match="not found"):
        account_from_keystore(tmp_path / "missing.json", "pw")


# -- compiling ---------------------------------------------------------------------------------


def test_compiled_contract_is_cached_in_a_file_keyed_by_source(tmp_path: Path) -> None:
    contract_mod._memory.clear()  # earlier tests may have compiled it already
    first = compiled_contract(tmp_path)
    files = list(tmp_path.glob("TreeHeadAnchor-*.json"))
    assert len(files) == 1 and first.key.startswith(files[0].stem.split("-")[1])
    assert {e.get("name") for e in first.abi} >= {"anchor", "latest", "head", "count", "Anchored"}
    contract_mod._memory.clear()
    assert compiled_contract(tmp_path) == first  # read back from the file
    assert first.key not in contract_mod._memory  # a file's content is never trusted in memory
    contract_mod._memory.clear()
    files[0].write_text("{not json")
    assert compiled_contract(tmp_path).bytecode == first.bytecode  # damaged cache: recompiled
    # other source, other key
    other = contract_mod._cache_key(contract_mod.SOURCE_PATH.read_text() + "\n# changed\n")
    assert other != first.key


# -- the contract on py-evm --------------------------------------------------------------------


def test_allow_list_is_enforced(chain: AnchorChain, members: list[LocalAccount]) -> None:
    with pytest.raises(ChainError, match="not a member"):
        chain.anchor(Account.create(), 1, root(1))
    assert chain.count() == 0
    chain.anchor(members[1], 1, root(1))
    assert chain.count() == 1


def test_size_must_grow(chain: AnchorChain, members: list[LocalAccount]) -> None:
    with pytest.raises(ChainError, match="size must grow"):
        chain.anchor(members[0], 0, root(0))
    chain.anchor(members[0], 5, root(5))
    for size in (5, 4):
        with pytest.raises(ChainError, match="size must grow"):
            chain.anchor(members[1], size, root(size))
    chain.anchor(members[2], 6, root(6))
    assert [h.size for h in chain.anchored_heads()] == [5, 6]


def test_anchor_emits_event_with_its_fields(
    chain: AnchorChain, members: list[LocalAccount]
) -> None:
    info = chain.anchor(members[2], 7, root(7))
    assert info.gas_used > 21_000 and info.block > 0
    receipt = chain.w3.eth.get_transaction_receipt(info.tx_hash)
    contract = chain.w3.eth.contract(address=chain.contract_address, abi=compiled_contract().abi)
    (event,) = contract.events.Anchored().process_receipt(receipt)
    assert event["args"]["size"] == 7
    assert bytes(event["args"]["root"]) == root(7)
    assert event["args"]["submitter"] == members[2].address


def test_view_functions(chain: AnchorChain, members: list[LocalAccount]) -> None:
    contract = chain.w3.eth.contract(address=chain.contract_address, abi=compiled_contract().abi)
    assert chain.latest() is None
    with pytest.raises(Exception, match="nothing anchored"):
        contract.functions.latest().call()
    for i, size in enumerate((2, 3, 9)):
        chain.anchor(members[i], size, root(size))
    assert chain.count() == 3
    assert chain.latest() == AnchoredHead(9, root(9), members[2].address)
    assert contract.functions.head(1).call() == (3, root(3), members[1].address)
    with pytest.raises(Exception, match="no such head"):
        contract.functions.head(3).call()
    assert [row[0] for row in contract.functions.heads(1, 1).call()] == [3]
    assert [row[0] for row in contract.functions.heads(1, 10).call()] == [3, 9]
    assert contract.functions.heads(5, 10).call() == []
    assert chain.anchored_heads() == [
        AnchoredHead(2, root(2), members[0].address),
        AnchoredHead(3, root(3), members[1].address),
        AnchoredHead(9, root(9), members[2].address),
    ]
    assert chain.members() == [m.address for m in members]
    assert chain.genesis_digest() == GENESIS
    assert contract.functions.is_member(members[0].address).call() is True
    assert contract.functions.is_member(Account.create().address).call() is False
    assert chain.code_matches()


def test_constructor_rejects_bad_member_lists(tmp_path: Path, members: list[LocalAccount]) -> None:
    with AnchorChain.embedded(tmp_path) as ch:
        with pytest.raises(ChainError, match="no members"):
            ch.deploy([], GENESIS)
        with pytest.raises(ChainError, match="duplicate member"):
            ch.deploy([members[0].address, members[0].address], GENESIS)
        with pytest.raises(ChainError, match="genesis digest must be 32 bytes"):
            ch.deploy([members[0].address], b"short")
        assert ch.contract_address is None


def test_client_refuses_bad_input(tmp_path: Path, members: list[LocalAccount]) -> None:
    with AnchorChain.embedded(tmp_path) as ch:
        with pytest.raises(ChainError, match="no anchor contract"):
            ch.anchor(members[0], 1, root(1))
        ch.deploy([members[0].address], GENESIS)
        with pytest.raises(ChainError, match="32 bytes"):
            ch.anchor(members[0], 1, b"\x00" * 31)


def test_unreachable_node_is_a_chain_error() -> None:
    with pytest.raises(ChainError, match="cannot reach"):
        AnchorChain.connect("http://127.0.0.1:9")


# -- persistence -------------------------------------------------------------------------------


def test_embedded_chain_persists_across_reopen(tmp_path: Path, members: list[LocalAccount]) -> None:
    state = tmp_path / "run" / "chain"
    with AnchorChain.embedded(state) as ch:
        address = ch.deploy([m.address for m in members], GENESIS)
        infos = [ch.anchor(members[i], i + 1, root(i + 1)) for i in range(3)]
        heads = ch.anchored_heads()
    with AnchorChain.embedded(state, readonly=True) as ro:  # what `audit` does
        assert ro.contract_address == address
        assert ro.anchored_heads() == heads
        log = ro.anchor_log()  # what the report and dashboard show: block and transaction too
        assert [a.head for a in log] == heads
        assert [(a.block, a.tx_hash) for a in log] == [(i.block, i.tx_hash) for i in infos]
        with pytest.raises(ChainError, match="read-only"):
            ro.anchor(members[0], 10, root(10))
    with AnchorChain.embedded(state) as ch:
        assert ch.contract_address == address and ch.anchored_heads() == heads
        info = ch.anchor(members[1], 4, root(4))
        assert info.block == infos[-1].block + 1
        with pytest.raises(ChainError, match="size must grow"):
            ch.anchor(members[1], 4, root(4))
        assert [h.size for h in ch.anchored_heads()] == [1, 2, 3, 4]
        assert [a.head.size for a in ch.anchor_log()] == [1, 2, 3, 4]  # replayed and new
    with AnchorChain.embedded(state) as ch:
        assert [h.size for h in ch.anchored_heads()] == [1, 2, 3, 4]


def test_second_writer_is_refused(tmp_path: Path) -> None:
    with AnchorChain.embedded(tmp_path), pytest.raises(ChainError, match="another process"):
        AnchorChain.embedded(tmp_path)


def test_readonly_open_of_missing_chain_fails(tmp_path: Path) -> None:
    with pytest.raises(ChainError, match="no embedded chain"):
        AnchorChain.embedded(tmp_path / "nothing", readonly=True)


def _rows(path: Path) -> list[tuple[int, bytes]]:
    with sqlite3.connect(path) as db:
        return [(int(s), bytes(r)) for s, r in db.execute("SELECT seq, raw FROM txs ORDER BY seq")]


def test_altered_record_is_detected_on_reopen(tmp_path: Path, members: list[LocalAccount]) -> None:
    with AnchorChain.embedded(tmp_path) as ch:
        ch.deploy([m.address for m in members], GENESIS)
        for i in range(3):
            ch.anchor(members[0], i + 1, root(i + 1))
    record = tmp_path / "chain.sqlite"
    seq, raw = _rows(record)[-2]
    # Someone holding the member key re-signs the second anchor with another root.
    fn = ch.w3.eth.contract(address=ch.contract_address, abi=compiled_contract().abi)
    forged = (
        members[0]
        .sign_transaction(
            {
                **_decoded_fields(raw),
                "to": ch.contract_address,
                "data": fn.functions.anchor(2, root(99))._encode_transaction_data(),
            }
        )
        .raw_transaction
    )
    with sqlite3.connect(record) as db:
        db.execute("UPDATE txs SET raw = ? WHERE seq = ?", (bytes(forged), seq))
    with pytest.raises(ChainError, match="was altered"):
        AnchorChain.embedded(tmp_path)
    # dropping a transaction is caught as well
    with sqlite3.connect(record) as db:
        db.execute("UPDATE txs SET raw = ? WHERE seq = ?", (raw, seq))
        db.execute("DELETE FROM txs WHERE seq = ?", (seq,))
    with pytest.raises(ChainError):
        AnchorChain.embedded(tmp_path)


@pytest.mark.parametrize(
    ("edit", "refusal"),
    [
        ("UPDATE meta SET value = lower(value)", "not as `deploy` wrote it"),
        (
            f"UPDATE meta SET value = '{checksum('0x' + '00' * 19 + 'aa')}'",
            "none of its transactions deployed the contract it names",
        ),
        ("UPDATE meta SET key = 'contracts'", "its contract address is not named"),
        ("UPDATE meta SET value = '0xzz'", "not an Ethereum address"),
        ("DELETE FROM txs WHERE seq = 2", "transaction 2 is missing"),
        ("UPDATE txs SET raw = x'02f801c0' WHERE seq = 1", "transaction 1 does not replay"),
        ("UPDATE txs SET raw = CAST(raw AS TEXT) WHERE seq = 1", "transaction 1 is malformed"),
    ],
)
def test_each_alteration_of_the_record_is_refused_by_name(
    tmp_path: Path, members: list[LocalAccount], edit: str, refusal: str
) -> None:
    with AnchorChain.embedded(tmp_path) as ch:
        ch.deploy([m.address for m in members], GENESIS)
        for i in range(2):
            ch.anchor(members[0], i + 1, root(i + 1))
    with AnchorChain.embedded(tmp_path, readonly=True) as ro:
        assert ro.count() == 2
    with sqlite3.connect(tmp_path / "chain.sqlite") as db:
        db.execute(edit)
    with pytest.raises(ChainError, match=refusal):
        AnchorChain.embedded(tmp_path, readonly=True)


def test_a_readonly_open_creates_nothing_in_an_emptied_record(tmp_path: Path) -> None:
    """A record cut to nothing is refused, not silently re-created as an empty chain."""
    (tmp_path / "chain.sqlite").write_bytes(b"")
    with pytest.raises(ChainError, match="cannot read chain record"):
        AnchorChain.embedded(tmp_path, readonly=True)
    assert (tmp_path / "chain.sqlite").read_bytes() == b""


def _decoded_fields(raw: bytes) -> dict[str, object]:
    from eth_account.typed_transactions import TypedTransaction
    from hexbytes import HexBytes

    fields = TypedTransaction.from_bytes(HexBytes(raw)).as_dict()
    keep = ("chainId", "nonce", "maxPriorityFeePerGas", "maxFeePerGas", "gas", "value")
    return {k: fields[k] for k in keep}


# -- audit checks ------------------------------------------------------------------------------


class HashChainLog:
    """A stand-in for the ledger: root at size n commits to the first n entries."""

    def __init__(self, entries: list[bytes]) -> None:
        self.entries = list(entries)

    def root_at(self, size: int) -> bytes:
        h = b"\x00" * 32
        for e in self.entries[:size]:
            h = hashlib.sha256(h + e).digest()
        return h

    @property
    def size(self) -> int:
        return len(self.entries)


def _check(heads: list[AnchoredHead], log: HashChainLog) -> list[str]:
    return check_anchored(heads, log.size, log.root_at, lambda old, new: old <= new)


def test_check_anchored_accepts_an_extension_and_catches_a_rewrite(
    chain: AnchorChain, members: list[LocalAccount]
) -> None:
    log = HashChainLog([b"e%d" % i for i in range(10)])
    for i, size in enumerate((3, 6)):
        chain.anchor(members[i], size, log.root_at(size))
    heads = chain.anchored_heads()
    log.entries += [b"later1", b"later2"]  # growing past the anchor is fine
    assert _check(heads, log) == []

    rewritten = HashChainLog(list(log.entries))
    rewritten.entries[4] = b"forged"  # inside the anchored prefix of size 6, not of size 3
    problems = _check(heads, rewritten)
    assert problems == [problems[0]]
    assert "local history does not extend anchored head at size 6" in problems[0]

    truncated = HashChainLog(log.entries[:5])
    problems = _check(heads, truncated)
    assert len(problems) == 1 and "at size 6" in problems[0] and "truncated" in problems[0]


def test_check_anchored_reports_failed_consistency_and_non_growing_heads() -> None:
    log = HashChainLog([b"a", b"b", b"c"])
    heads = [AnchoredHead(2, log.root_at(2), "0x0")]
    problems = check_anchored(heads, 3, log.root_at, lambda old, new: False)
    assert problems == [
        "local history does not extend anchored head at size 2: "
        "no valid consistency proof from size 2 to 3"
    ]
    fake = [AnchoredHead(2, log.root_at(2), "0x0"), AnchoredHead(2, log.root_at(2), "0x0")]
    assert any("does not grow" in p for p in _check(fake, log))
    assert _check([], log) == []


def test_check_deployment(chain: AnchorChain, members: list[LocalAccount]) -> None:
    addrs = [m.address for m in members]
    ok = check_deployment(
        chain.members(), chain.genesis_digest(), chain.code_matches(), addrs, GENESIS
    )
    assert ok == []
    outsider = Account.create().address
    problems = check_deployment(
        chain.members(), chain.genesis_digest(), True, [*addrs[:2], outsider], root(0)
    )
    assert len(problems) == 3
    assert any("another genesis" in p for p in problems)
    assert any("non-members" in p and addrs[2].lower() in p for p in problems)
    assert any("missing members" in p and outsider.lower() in p for p in problems)
    chain.use(outsider)  # no code at an ordinary account
    assert not chain.code_matches()
