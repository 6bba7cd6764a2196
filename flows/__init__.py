"""Prefect flows: thin async wrappers that drive the core package."""
