"""Audit store: every recovery run and each of its steps, in any SQLAlchemy database."""

from recovery.audit.records import RunRecord, StepRecord
from recovery.audit.store import AuditStore

__all__ = ["AuditStore", "RunRecord", "StepRecord"]
