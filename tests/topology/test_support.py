"""A missing tool skips a topology test on a developer's machine and fails it under `make test`."""

from __future__ import annotations

import pytest

from tests.topology.support import REQUIRE_ENV, find_binary


def test_a_missing_binary_skips_when_the_tools_are_not_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="make tools"):
        find_binary("registry-proxy-no-such-tool")


def test_a_missing_binary_fails_when_the_tools_are_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=REQUIRE_ENV):
        find_binary("registry-proxy-no-such-tool")
