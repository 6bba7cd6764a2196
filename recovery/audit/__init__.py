"""Audit store: every recovery run and each of its steps, in any SQLAlchemy database."""

from recovery.audit.store import AuditStore, RunRecord, StepRecord

__all__ = ["AuditStore", "RunRecord", "StepRecord"]
