"""Deployments: the flows as Prefect deployments (`recovery serve`, prefect.yaml)."""
