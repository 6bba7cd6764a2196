"""Thin Prefect task wrappers over the core package (one coarse, retry-worthy step each)."""
