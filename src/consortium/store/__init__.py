"""Content-addressed store: CIDs, an on-disk block store, UnixFS files, objects, tensors, CAR."""

from consortium.store.blockstore import CHUNK_SIZE, MAX_BLOCK_SIZE, BlockStore, VerifyReport
from consortium.store.cid import CID, as_cid, check, cid_for, cid_key, parse_cid
from consortium.store.objects import (
    file_cid,
    file_size,
    get_bytes,
    get_file,
    get_object,
    is_complete,
    iter_blocks,
    iter_file,
    put_bytes,
    put_file,
    put_object,
    put_verified,
    walk,
)
from consortium.store.tensors import decode_tensors, encode_tensors, get_tensors, put_tensors
from consortium.store.unixfs import DEFAULT_PROFILE, PROFILES, Profile, matching_profile, profile

__all__ = [
    "CHUNK_SIZE",
    "CID",
    "DEFAULT_PROFILE",
    "MAX_BLOCK_SIZE",
    "PROFILES",
    "BlockStore",
    "Profile",
    "VerifyReport",
    "as_cid",
    "check",
    "cid_for",
    "cid_key",
    "decode_tensors",
    "encode_tensors",
    "file_cid",
    "file_size",
    "get_bytes",
    "get_file",
    "get_object",
    "get_tensors",
    "is_complete",
    "iter_blocks",
    "iter_file",
    "matching_profile",
    "parse_cid",
    "profile",
    "put_bytes",
    "put_file",
    "put_object",
    "put_tensors",
    "put_verified",
    "walk",
]
