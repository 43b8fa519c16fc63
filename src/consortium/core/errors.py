"""Typed errors a user (or a hostile peer) can cause.

Every error carries a message that says what went wrong and, where it can, what to do; the CLI
prints it as one line and exits non-zero, never with a traceback.
"""

from __future__ import annotations


class ConsortiumError(Exception):
    """Base of every error the project raises on purpose."""

    exit_code = 1


class ConfigError(ConsortiumError):
    """A configuration file or command-line option is missing or invalid."""

    exit_code = 2


class EncodingError(ConsortiumError):
    """Bytes could not be decoded as canonical dag-cbor, or an object cannot be encoded."""


class IdentityError(ConsortiumError):
    """A key file is missing, unreadable, has unsafe permissions or a wrong passphrase."""


class SignatureError(ConsortiumError):
    """A signature is missing, malformed or does not verify."""


class GenesisError(ConsortiumError):
    """The genesis manifest is malformed or not signed by every member."""


class FileWriteError(ConsortiumError):
    """A file could not be written (disk full, no permission, read-only file system); its old
    contents, if any, are unchanged."""


class StoreError(ConsortiumError):
    """The content-addressed store could not read or write a block."""


class IntegrityError(StoreError):
    """Bytes read back do not hash to the identifier they were stored under."""


class NotFoundError(StoreError):
    """A block or object is not in the store."""


class LedgerError(ConsortiumError):
    """The ledger is malformed, or an operation on it is not allowed."""


class ProofError(LedgerError):
    """An inclusion or consistency proof does not verify."""


class ForkError(LedgerError):
    """A history offered by a peer is not an extension of the one we trust."""


class AuditError(ConsortiumError):
    """An audit found tampering; the message names the first problem."""


class TransportError(ConsortiumError):
    """A peer is unreachable, timed out, or a request to it failed."""


class PeerRefused(TransportError):
    """A peer answered but refused: unauthenticated, too large, or its handler raised an error."""


class FolderLocked(ConsortiumError):
    """Another process holds this node folder's writer lock (a second `node start`)."""


class ModelError(ConsortiumError):
    """Model weights or a model configuration do not fit (names, shapes, dtypes, values)."""


class ChainError(ConsortiumError):
    """An Ethereum node refused, reverted or could not be reached while anchoring tree heads."""
