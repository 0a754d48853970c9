"""Shared fixtures. Retries run without waiting in tests (stamina's testing mode)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import stamina

from reconciler.rules import Rules, load_rules

DEMO_RULES = Path(__file__).parent.parent / "reconciler" / "demo" / "rules.toml"


@pytest.fixture(autouse=True)
def _instant_retries() -> Iterator[None]:
    """Retries still happen (3 attempts) but without sleeping."""
    with stamina.set_testing(True, attempts=3):
        yield


@pytest.fixture(scope="session")
def rules() -> Rules:
    return load_rules(DEMO_RULES)
