"""Under CI a missing Redis/PostgreSQL fails the test; only a developer's machine may skip it."""

from __future__ import annotations

import pytest
from service_guard import service_unavailable


@pytest.mark.parametrize("value", ["true", "TRUE", "1", "yes"])
def test_a_missing_service_fails_under_ci(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="required services must be running"):
        service_unavailable("Redis not reachable")


def test_a_missing_service_skips_only_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        service_unavailable("Redis not reachable")
