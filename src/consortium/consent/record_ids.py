"""Record ids: the names consent is granted for, as text.

A record id is the engineer's own key for a record (a patient number, a file name, a row of
a built-in dataset), so a subject's consent follows their record in the engineer's data. It is a
string of 1 to 256 UTF-8 bytes with no control character and no leading or trailing whitespace;
an integer (a row of a built-in dataset, as registries made before record ids were text keyed
them) is its decimal text.

*Numeric* ids, the canonical decimal text of an integer below 2^63 ("0", "17", not "017"), are
hashed as that integer (8 bytes, big-endian) in salted blinds and leaf commitments, exactly as
when ids were integers, so the history chains and round commitments of earlier registries stay
valid. Every other id is hashed as length-prefixed UTF-8 under its own domain tag
(`consent.history.blind`, `consent.commitments.commitment`), so no text id shares its hashed
bytes with a numeric one.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from consortium.core.errors import ConfigError

#: Longest record id, in UTF-8 bytes (its length is framed in 2 bytes where it is hashed).
MAX_BYTES = 256
_MAX_NUMERIC = 2**63 - 1
_NUMERIC = re.compile(r"0|[1-9][0-9]{0,18}")
#: Text no id contains, so a list of ids joins into one blob unambiguously.
SEPARATOR = "\x00"


class RecordIdError(ConfigError):
    """A value that cannot be a record id."""


def record_id(value: Any) -> str:
    """`value` as a record id (text); RecordIdError saying why it cannot be one."""
    if isinstance(value, bool | np.bool_):
        raise RecordIdError(f"record id {value!r} is a boolean")
    if isinstance(value, int | np.integer):
        n = int(value)
        if not 0 <= n <= _MAX_NUMERIC:
            raise RecordIdError(f"record id {n} is out of range (0 to 2^63 - 1)")
        return str(n)
    if not isinstance(value, str):
        raise RecordIdError(f"record id {value!r} is a {type(value).__name__}, not text")
    text = str(value)
    if not text:
        raise RecordIdError("a record id is empty")
    if text != text.strip():
        raise RecordIdError(f"record id {text!r} begins or ends with whitespace")
    if any(unicodedata.category(c) == "Cc" for c in text):
        raise RecordIdError(f"record id {text!r} contains a control character")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise RecordIdError(f"record id {text!r} is not valid Unicode text") from None
    if size > MAX_BYTES:
        raise RecordIdError(f"record id {text[:40]!r}… is longer than {MAX_BYTES} bytes")
    return text


def numeric(rid: str) -> int | None:
    """The integer a numeric record id is hashed as, or None for a text id."""
    if _NUMERIC.fullmatch(rid):
        n = int(rid)
        return n if n <= _MAX_NUMERIC else None
    return None


def id_array(values: Iterable[str]) -> npt.NDArray[np.str_]:
    """Record ids (already checked) as a NumPy text array."""
    return np.array(list(values), dtype=np.str_)


def encode_ids(ids: Iterable[str]) -> bytes:
    """A sorted list of distinct record ids as one blob (registry `rounds.ids`)."""
    return SEPARATOR.join(ids).encode("utf-8")


def decode_ids(blob: bytes) -> list[str]:
    """The ids `encode_ids` joined; RecordIdError if the blob is not such a list."""
    if not blob:
        return []
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError:
        raise RecordIdError("a list of record ids is not UTF-8") from None
    ids = text.split(SEPARATOR)  # each id is checked where it is used: it must have a salt
    if any(a >= b for a, b in itertools.pairwise(ids)):
        raise RecordIdError("a list of record ids is not sorted and distinct")
    return ids
