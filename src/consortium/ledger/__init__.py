"""The ledger: an RFC 9162 Merkle log of signed entries with cosigned tree heads."""

from consortium.ledger.entries import Entry, genesis_entry, make_record
from consortium.ledger.heads import (
    Cosignature,
    CosignedHead,
    Equivocation,
    TreeHead,
    find_equivocation,
    find_equivocations,
)
from consortium.ledger.log import Ledger
from consortium.ledger.merkle import verify_consistency, verify_inclusion
from consortium.ledger.replica import (
    Extension,
    LedgerSource,
    LocalSource,
    SyncResult,
    sync,
    verify_extension,
)

__all__ = [
    "Cosignature",
    "CosignedHead",
    "Entry",
    "Equivocation",
    "Extension",
    "Ledger",
    "LedgerSource",
    "LocalSource",
    "SyncResult",
    "TreeHead",
    "find_equivocation",
    "find_equivocations",
    "genesis_entry",
    "make_record",
    "sync",
    "verify_consistency",
    "verify_extension",
    "verify_inclusion",
]
