"""Prefect-free core of the self-healing recovery pipelines (see ARCHITECTURE.md)."""

__version__ = "0.1.0"
