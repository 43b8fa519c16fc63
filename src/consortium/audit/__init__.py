"""Offline re-verification of a run folder: `consortium audit`."""

from consortium.audit.auditor import AuditReport, audit

__all__ = ["AuditReport", "audit"]
