"""Core: canonical encoding, domain separation, identities and the genesis manifest."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consortium.core.encoding import (
    CONSORTIUM_DOMAINS,
    IDENTITY_DOMAINS,
    Domain,
    decode,
    digest,
    encode,
    signing_payload,
)
from consortium.core.errors import EncodingError, GenesisError, IdentityError, SignatureError
from consortium.core.genesis import Genesis, Purpose, quorum_for
from consortium.core.identity import (
    NodeIdentity,
    PublicIdentity,
    is_valid_signature,
    node_id_for,
    verify_signature,
)
from consortium.ledger.entries import check_signature

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text() | st.binary(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_equal_objects_encode_to_identical_bytes(obj: object) -> None:
    assert encode(obj) == encode(decode(encode(obj)))


def test_key_order_does_not_change_encoding() -> None:
    a = {"b": 1, "a": [1, 2, {"z": b"x", "y": None}]}
    b = {"a": [1, 2, {"y": None, "z": b"x"}], "b": 1}
    assert encode(a) == encode(b)


def test_decode_refuses_non_canonical_bytes() -> None:
    # a map with keys out of canonical order: {"b": 1, "a": 2}
    raw = bytes([0xA2, 0x61, ord("b"), 0x01, 0x61, ord("a"), 0x02])
    with pytest.raises(EncodingError):
        decode(raw)
    with pytest.raises(EncodingError):
        decode(b"\xff\xff")


def test_signature_for_one_domain_does_not_verify_in_another() -> None:
    ident = NodeIdentity.generate("a")
    body = {"size": 3, "root": b"\x00" * 32}
    sig = ident.sign(Domain.TREE_HEAD, body, DIGEST)
    verify_signature(ident.public_key, Domain.TREE_HEAD, body, sig, DIGEST)
    assert not is_valid_signature(ident.public_key, Domain.GENESIS, body, sig)
    assert not is_valid_signature(ident.public_key, Domain.RECORD, body, sig, DIGEST)
    assert not is_valid_signature(
        ident.public_key, Domain.TREE_HEAD, {**body, "size": 4}, sig, DIGEST
    )
    assert signing_payload(Domain.TREE_HEAD, body, DIGEST) != signing_payload(
        Domain.RECORD, body, DIGEST
    )
    with pytest.raises(SignatureError):
        verify_signature(ident.public_key, Domain.TREE_HEAD, body, sig[:10], DIGEST)


# -- consortium binding ----------------------------------------------------------------------------

DIGEST = bytes(range(32))


def test_domains_split_into_consortium_bound_and_identity() -> None:
    assert {
        Domain.TREE_HEAD,
        Domain.RECORD,
        Domain.ROUND,
        Domain.MESSAGE,
        Domain.STORAGE_ANSWER,
    } <= CONSORTIUM_DOMAINS
    assert {
        Domain.GENESIS,
        Domain.TLS_BINDING,
        Domain.CHAIN_KEY,
        Domain.CHAIN_ACCOUNT,
        Domain.BOX_KEY,
        Domain.BEACON_DEALING,
    } == IDENTITY_DOMAINS
    assert set(Domain) == CONSORTIUM_DOMAINS | IDENTITY_DOMAINS
    assert not CONSORTIUM_DOMAINS & IDENTITY_DOMAINS


def test_payload_is_tag_then_consortium_digest_then_canonical_bytes() -> None:
    body = {"x": 1}
    tag = b"consortium/v1/record"
    expected = bytes([len(tag)]) + tag + DIGEST + encode(body)
    assert signing_payload(Domain.RECORD, body, DIGEST) == expected
    # Identity domains carry no digest: their payloads (hence TLS bindings, EVM accounts) are
    # what they were before consortium binding.
    tag = b"consortium/v1/tls-binding"
    assert signing_payload(Domain.TLS_BINDING, body) == bytes([len(tag)]) + tag + encode(body)


@pytest.mark.parametrize("domain", [d for d in Domain if d in CONSORTIUM_DOMAINS])
def test_a_bound_domain_without_a_digest_is_a_programming_error(domain: Domain) -> None:
    ident = NodeIdentity.generate("a")
    body = {"size": 3}
    sig = ident.sign(domain, body, DIGEST)
    for missing in (b"", DIGEST[:31], DIGEST + b"\x00"):
        with pytest.raises(ValueError, match="genesis digest"):
            signing_payload(domain, body, missing)
        with pytest.raises(ValueError, match="genesis digest"):
            ident.sign(domain, body, missing)
        # Raised, not reported as an invalid signature: a caller cannot silently forget it.
        with pytest.raises(ValueError, match="genesis digest"):
            is_valid_signature(ident.public_key, domain, body, sig, missing)
        with pytest.raises(ValueError, match="genesis digest"):
            check_signature(ident.public_key, domain, body, sig, missing)


@pytest.mark.parametrize("domain", [d for d in Domain if d in IDENTITY_DOMAINS])
def test_an_identity_domain_with_a_digest_is_a_programming_error(domain: Domain) -> None:
    ident = NodeIdentity.generate("a")
    body = {"node_id": ident.node_id}
    sig = ident.sign(domain, body)
    verify_signature(ident.public_key, domain, body, sig)
    with pytest.raises(ValueError, match="not bound to a consortium"):
        signing_payload(domain, body, DIGEST)
    with pytest.raises(ValueError, match="not bound to a consortium"):
        ident.sign(domain, body, DIGEST)
    with pytest.raises(ValueError, match="not bound to a consortium"):
        verify_signature(ident.public_key, domain, body, sig, DIGEST)
    with pytest.raises(ValueError, match="not bound to a consortium"):
        check_signature(ident.public_key, domain, body, sig, DIGEST)


def _two_consortia() -> tuple[list[NodeIdentity], Genesis, Genesis]:
    """Consortia A and B with the very same members (keys), differing only in their manifest."""
    ids = [NodeIdentity.generate(f"n{i}", seed=b"bind%d" % i) for i in range(3)]
    pubs = [i.public() for i in ids]
    a = Genesis.create("alpha", pubs, [Purpose("research")], 1)
    b = Genesis.create("alpha", pubs, [Purpose("marketing")], 1)
    for g in (a, b):
        for i in ids:
            g.deal(i)
        for i in ids:
            g.sign(i)
    return ids, a, b


def test_a_signature_made_in_one_consortium_does_not_verify_in_another() -> None:
    ids, a, b = _two_consortia()
    assert a.digest() != b.digest()
    body = {"size": 3, "root": b"\x00" * 32, "time": 1}
    for domain in CONSORTIUM_DOMAINS:
        sig = ids[0].sign(domain, body, a.digest())
        assert is_valid_signature(ids[0].public_key, domain, body, sig, a.digest())
        assert not is_valid_signature(ids[0].public_key, domain, body, sig, b.digest())


def test_node_id_is_a_printable_cid_of_the_key() -> None:
    ident = NodeIdentity.generate("a")
    assert ident.node_id.startswith("b") and ident.node_id.isalnum()
    assert ident.node_id == node_id_for(ident.public_key)
    assert node_id_for(bytes(32)) != ident.node_id
    with pytest.raises(IdentityError):
        node_id_for(b"short")


def test_identity_files_are_private_and_round_trip(tmp_path: Path) -> None:
    ident = NodeIdentity.generate("alice", "127.0.0.1:7001")
    ident.save(tmp_path / "a")
    mode = stat.S_IMODE((tmp_path / "a" / "node.key").stat().st_mode)
    assert mode == 0o600
    loaded = NodeIdentity.load(tmp_path / "a")
    assert loaded.node_id == ident.node_id
    pub = PublicIdentity.load(tmp_path / "a" / "node.pub")
    assert pub.node_id == ident.node_id and pub.address == "127.0.0.1:7001"
    assert "PRIVATE" not in (tmp_path / "a" / "node.pub").read_text()
    with pytest.raises(IdentityError, match="refusing to overwrite"):
        ident.save(tmp_path / "a")


def test_tampered_tls_binding_is_refused(tmp_path: Path) -> None:
    ident = NodeIdentity.generate("d")
    other = NodeIdentity.generate("e")
    data = ident.public().to_json()
    data["tls_cert"] = other.tls_cert_pem  # swap in someone else's TLS key
    with pytest.raises(IdentityError, match="not bound"):
        PublicIdentity.from_json(data)


def _genesis(n: int) -> tuple[list[NodeIdentity], Genesis]:
    ids = [NodeIdentity.generate(f"n{i}", f"127.0.0.1:{7100 + i}") for i in range(n)]
    g = Genesis.create("test", [i.public() for i in ids], [Purpose("research", 3.0, 1e-5)], 1)
    for i in ids:
        g.deal(i)
    return ids, g


def test_quorum_is_two_thirds_rounded_up() -> None:
    assert [quorum_for(n) for n in (1, 2, 3, 4, 5, 6, 7)] == [1, 2, 2, 3, 4, 4, 5]
    assert _genesis(5)[1].quorum == 4


def test_genesis_fully_signed_verifies_and_round_trips(tmp_path: Path) -> None:
    ids, g = _genesis(3)
    for i in ids:
        g.sign(i)
    g.verify()
    g.save(tmp_path / "genesis.json")
    again = Genesis.load(tmp_path)
    again.verify()
    assert again.digest() == g.digest()


def test_genesis_missing_signature_names_the_member() -> None:
    ids, g = _genesis(3)
    g.sign(ids[0])
    g.sign(ids[2])
    with pytest.raises(GenesisError, match="n1"):
        g.verify()
    assert g.missing_signatures() == ["n1"]


def test_genesis_invalid_signature_names_the_member(tmp_path: Path) -> None:
    ids, g = _genesis(3)
    for i in ids:
        g.sign(i)
    data = g.to_json()
    sig = bytearray(bytes.fromhex(data["signatures"][ids[1].node_id]))
    sig[0] ^= 1
    data["signatures"][ids[1].node_id] = sig.hex()
    (tmp_path / "genesis.json").write_text(json.dumps(data))
    with pytest.raises(GenesisError, match="invalid signature from member n1"):
        Genesis.load(tmp_path).verify()


def test_genesis_duplicate_member_is_refused() -> None:
    a = NodeIdentity.generate("a")
    with pytest.raises(GenesisError, match="listed twice"):
        Genesis.create("x", [a.public(), a.public()], [Purpose("p")], 1)


def test_outsider_cannot_sign_genesis() -> None:
    _, g = _genesis(2)
    with pytest.raises(GenesisError, match="not listed"):
        g.sign(NodeIdentity.generate("mallory"))


def test_body_survives_canonical_round_trip() -> None:
    ids, g = _genesis(2)
    for i in ids:
        g.sign(i)
    rebuilt = Genesis.from_body(decode(encode(g.body())), g.signatures)
    rebuilt.verify()


def test_genesis_digest_cache_follows_every_change() -> None:
    ids = [NodeIdentity.generate(f"n{i}", seed=b"cache%d" % i) for i in range(2)]
    g = Genesis.create("alpha", [i.public() for i in ids], [Purpose("research")], 1)
    before = g.digest()
    assert g.digest() == before == digest(g.body())
    g.consortium = "beta"
    assert g.digest() == digest(g.body()) != before
    g.consortium = "alpha"
    assert g.digest() == before
    g.purposes.append(Purpose("more"))
    assert g.digest() == digest(g.body()) != before
    g.purposes.pop()
    g.members[0] = ids[1].public()  # same length, another member in the first place
    assert g.digest() == digest(g.body()) != before
    g.members[0] = ids[0].public()  # an equal but new object
    assert g.digest() == before
    g.quorum = 1
    assert g.digest() == digest(g.body()) != before
