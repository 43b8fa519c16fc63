"""Consortium: decentralized, privacy-preserving machine learning with an auditable ledger."""

__version__ = "0.1.0"
