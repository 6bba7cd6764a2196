"""Config validation of ``depends_on`` and ``escalation`` (issue 12): one line naming the field,
exit 2, through the real ``recovery validate`` entry point; and the shipped example validates."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from recovery.config.graph import check_dependencies, layers, upstream
from recovery.config.loader import load_config, parse_config
from recovery.engine.escalation import check_escalation
from recovery.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "dependencies.yaml"


def http(name: str, **extra: object) -> dict[str, object]:
    return {"kind": "http", "name": name, "url": f"http://127.0.0.1:9/{name}", **extra}


def validate(tmp_path: Path, data: dict[str, object]) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "recovery.yaml"
    config.write_text(yaml.safe_dump({"audit_url": f"sqlite:///{tmp_path}/a.db", **data}))
    return subprocess.run(
        [sys.executable, "-m", "recovery_cli.main", "--config", str(config), "validate"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


BAD = {
    "cycle": (
        [http("a", depends_on=["b"]), http("b", depends_on=["c"]), http("c", depends_on=["a"])],
        "targets[2].depends_on: cycle: a -> b -> c -> a",
    ),
    "unknown-target": (
        [http("a", depends_on=["orders-db"])],
        "targets[0].depends_on[0]: unknown target 'orders-db'",
    ),
    "self": ([http("a", depends_on=["a"])], "targets[0].depends_on[0]: a target cannot depend on itself"),
    "unknown-workflow": (
        [http("a", escalation=["api-failure-recovery", "page-oncall"])],
        "targets[0].escalation[1]: unknown workflow 'page-oncall'",
    ),
    "wrong-kind": (
        [http("a", escalation=["database-recovery"])],
        "targets[0].escalation[0]: 'database-recovery' cannot recover a http target",
    ),
    "manual-only": (
        [{"kind": "redis", "name": "c", "url": "redis://127.0.0.1:6379/0", "escalation": ["clear-cache"]}],
        "targets[0].escalation[0]: 'clear-cache' is a manual operation, not an automatic recovery",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_graph_or_ladder_is_one_line_exit_2(case: str, tmp_path: Path) -> None:
    targets, expected = BAD[case]
    result = validate(tmp_path, {"targets": targets})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"recovery: error: {expected}"]


def test_a_target_set_aside_for_an_unset_variable_is_still_a_known_dependency() -> None:
    config = parse_config(
        {"targets": [http("a", depends_on=["b"]), {**http("b"), "url": "http://${RT_UNSET_HOST_12}/x"}]}
    )
    assert [t.name for t in config.targets] == ["a"] and "b" in config.unresolved


def test_upstream_and_layers_order_dependencies_first() -> None:
    config = parse_config(
        {
            "targets": [
                http("web", depends_on=["api", "cache"]),
                http("api", depends_on=["db"]),
                http("cache"),
                http("db"),
            ]
        }
    )
    assert upstream(config.targets, "web") == ["db", "api", "cache"]
    assert layers(config.targets) == [["cache", "db"], ["api"], ["web"]]


@dataclass
class Node:
    name: str
    depends_on: list[str] = field(default_factory=list)


def test_a_long_chain_is_checked_without_recursion() -> None:
    # Plain nodes: the graph code alone (parsing 3,000 targets is another test's business).
    chain = [Node(f"t{i}", [f"t{i + 1}"]) for i in range(3000)] + [Node("t3000")]
    check_dependencies(chain)
    assert len(layers(chain)) == 3001
    assert upstream(chain, "t2998") == ["t3000", "t2999"]
    with pytest.raises(ConfigError, match=r"^targets\[3000\]\.depends_on: cycle: t0 -> t1 -> t2 -> "):
        check_dependencies([*chain[:-1], Node("t3000", ["t0"])])


def test_the_example_config_validates(tmp_path: Path) -> None:
    config = load_config(EXAMPLE)
    check_escalation(config)
    names = {t.name: t for t in config.targets}
    assert any(t.escalation for t in config.targets) and any(t.depends_on for t in config.targets)
    assert all(dep in names for t in config.targets for dep in t.depends_on)
