"""Content-addressed store: CIDs, an on-disk block store, chunked files, objects and tensors."""

from consortium.store.blockstore import CHUNK_SIZE, MAX_BLOCK_SIZE, BlockStore, VerifyReport
from consortium.store.cid import CID, as_cid, check, cid_for, cid_key, parse_cid
from consortium.store.objects import (
    FILE_TYPE,
    file_cid,
    file_size,
    get_bytes,
    get_file,
    get_object,
    is_complete,
    iter_file,
    put_bytes,
    put_file,
    put_object,
    walk,
)
from consortium.store.tensors import decode_tensors, encode_tensors, get_tensors, put_tensors

__all__ = [
    "CHUNK_SIZE",
    "CID",
    "FILE_TYPE",
    "MAX_BLOCK_SIZE",
    "BlockStore",
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
    "iter_file",
    "parse_cid",
    "put_bytes",
    "put_file",
    "put_object",
    "put_tensors",
    "walk",
]
