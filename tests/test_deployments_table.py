"""prefect.yaml and `recovery serve` declare the same deployments (no Prefect import needed)."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _serve_table() -> dict[str, str]:
    """Read deployments/serve.py's DEPLOYMENTS without importing Prefect."""
    tree = ast.parse((REPO / "deployments" / "serve.py").read_text())
    table: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DeploymentSpec":
            name, entrypoint = (ast.literal_eval(a) for a in node.args[:2])
            table[name] = entrypoint
    return table


def test_prefect_yaml_matches_serve_table() -> None:
    doc = yaml.safe_load((REPO / "prefect.yaml").read_text())
    declared = {d["name"]: d["entrypoint"].replace("/", ".").replace(".py:", ":") for d in doc["deployments"]}
    assert declared == _serve_table()
    for d in doc["deployments"]:
        path, _, func = d["entrypoint"].partition(":")
        source = (REPO / path).read_text()
        assert f"def {func}(" in source, f"{d['entrypoint']} does not exist"


def test_every_seed_endpoint_is_a_deployment() -> None:
    assert set(_serve_table()) == {
        "monitor",
        "recover",
        "recovery-status",
        "reset-circuit-breaker",
        "circuit-breaker-status",
        "clear-cache",
        "reconnect-database",
        "recovery-history",
        "recovery-stats",
    }
