"""A purpose's record-of-processing fields (GDPR Article 30) in genesis: declared through
`genesis create --purposes FILE`, covered by the digest, omitted while unset so older manifests
keep their bytes and digest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from consortium.cli.app import app
from consortium.core.encoding import decode, digest, encode
from consortium.core.errors import GenesisError
from consortium.core.genesis import Genesis, Purpose
from consortium.core.identity import NodeIdentity

runner = CliRunner()
DECLARED = Purpose(
    "research",
    8.0,
    1e-5,
    ("health records", "lab results"),
    ("the consortium's members",),
    "5 years after the study ends",
)


def _signed(purpose: Purpose) -> Genesis:
    ids = [NodeIdentity.generate(f"n{i}", seed=b"purpose%d" % i) for i in range(2)]
    return Genesis.ceremony("alpha", ids, [purpose], 1)


def test_unset_fields_leave_the_body_as_before() -> None:
    g = _signed(Purpose("research", 3.0, 1e-5))
    (body,) = g.body()["purposes"]
    assert body == {"name": "research", "epsilon": 3.0, "delta": 1e-5}  # the old body, exactly
    again = Genesis.from_body(decode(encode(g.body())), g.signatures)
    again.verify()
    assert again.digest() == g.digest()
    assert again.purposes[0] == Purpose("research", 3.0, 1e-5)


def test_declared_fields_round_trip_and_are_covered_by_the_digest(tmp_path: Path) -> None:
    g = _signed(DECLARED)
    g.verify()
    g.save(tmp_path / "genesis.json")
    loaded = Genesis.load(tmp_path)
    loaded.verify()
    assert loaded.purposes == [DECLARED]
    assert Genesis.from_body(decode(encode(g.body())), g.signatures).purposes == [DECLARED]
    # An edit to a declared field voids every signature (the digest covers it).
    data = json.loads((tmp_path / "genesis.json").read_text())
    data["purposes"][0]["recipients"] = ["anyone"]
    (tmp_path / "genesis.json").write_text(json.dumps(data))
    with pytest.raises(GenesisError, match="invalid signature"):
        Genesis.load(tmp_path).verify()
    plain = Purpose("research", 8.0, 1e-5)
    assert digest(g.body()) != digest({**g.body(), "purposes": [plain.to_body()]})


def test_malformed_declarations_are_refused() -> None:
    with pytest.raises(GenesisError, match="data_categories"):
        Purpose("p", data_categories=("",))
    with pytest.raises(GenesisError, match="retention"):
        Purpose("p", retention=" padded ")
    g = _signed(DECLARED)
    body = decode(encode(g.body()))
    body["purposes"][0]["recipients"] = [7]
    with pytest.raises(GenesisError, match="recipients"):
        Genesis.from_body(body, g.signatures)
    body["purposes"][0]["recipients"] = []  # not canonical: an empty list is omitted
    with pytest.raises(GenesisError, match="canonical"):
        Genesis.from_body(body, g.signatures)


def test_genesis_create_reads_a_purposes_file(tmp_path: Path) -> None:
    pubs = []
    for i in range(2):
        ident = NodeIdentity.generate(f"n{i}", f"127.0.0.1:{7300 + i}")
        (tmp_path / f"n{i}.pub").write_text(json.dumps(ident.public().to_json()))
        pubs += ["--member", str(tmp_path / f"n{i}.pub")]
    toml = tmp_path / "purposes.toml"
    toml.write_text(
        '[[purpose]]\nname = "research"\nepsilon = 8.0\ndelta = 1e-5\n'
        'data_categories = ["health records", "lab results"]\n'
        'recipients = ["the consortium\'s members"]\nretention = "5 years after the study ends"\n'
    )
    out = tmp_path / "genesis.json"
    res = runner.invoke(
        app, ["genesis", "create", *pubs, "--purposes", str(toml), "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert Genesis.load(out).purposes == [DECLARED]
    toml.write_text('[[purpose]]\nname = "x"\nrecipient = ["typo"]\n')
    res = runner.invoke(
        app, ["genesis", "create", *pubs, "--purposes", str(toml), "--out", str(tmp_path / "g2")]
    )
    assert res.exit_code != 0
    assert "unknown key 'recipient'" in " ".join(res.output.split())
    assert "Traceback" not in res.output
