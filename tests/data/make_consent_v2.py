"""How `consent-v2.*` were made: with the code of format consortium-consent/2 (main at abc26c8,
before record ids were text), `PYTHONPATH=<that checkout>/src python make_consent_v2.py tests/data`.
Kept so the fixture can be remade; it fails with the current code, which writes format 3."""

import json
import sys
from pathlib import Path

from consortium.consent import ConsentRegistry, begin_round, erase_subject, receipt_from_registry
from consortium.consent.registry import FORMAT

assert FORMAT == "consortium-consent/2", FORMAT
out = Path(sys.argv[1])
path = out / "consent-v2.sqlite"
P = "research"
committed = {}
with ConsentRegistry(path) as reg:
    for s in range(6):
        reg.grant(f"s{s}", [2 * s, 2 * s + 1], [P], at=1.0)
    reg.grant("big", [12, 1000], [P], at=1.0)
    committed[1] = begin_round(reg, P, 1, at=10.0).commitment
    reg.withdraw("s1", at=20.0)
    reg.set_expiry("s2", None, 1000.0, at=21.0)
    committed[2] = begin_round(reg, P, 2, at=30.0).commitment
    erase_subject(reg, "s3", at=40.0)
    committed[3] = begin_round(reg, P, 3, at=50.0).commitment
    reg.grant("late", [20], [P], at=60.0)
    receipt = receipt_from_registry(reg, "s1", "node-x").dumps()
(out / "consent-v2.receipt-s1.json").write_text(receipt)
(out / "consent-v2.committed.json").write_text(
    json.dumps(
        {
            str(k): {
                "root": c.root.hex(),
                "count": c.count,
                "purpose": c.purpose,
                "head": c.head.hex(),
            }
            for k, c in committed.items()
        },
        indent=1,
    )
    + "\n"
)
