"""The token store remembers found tokens by their text: a reload must forget them all."""

from __future__ import annotations

import hashlib

import orjson

from proxy.http.auth import Role, TokenStore

A = "a-token-that-is-long-enough"
B = "b-token-that-is-long-enough"
HASHED = "h-token-that-is-long-enough"


def store(*entries: dict[str, str]) -> TokenStore:
    return TokenStore.from_json(orjson.dumps(list(entries)).decode())


def test_found_tokens_answer_the_same_again_and_guesses_are_not_kept() -> None:
    tokens = store(
        {"token": A, "tenant": "t", "role": "writer", "id": "a"},
        {
            "token_sha256": hashlib.sha256(HASHED.encode()).hexdigest(),
            "tenant": "t",
            "role": "reader",
            "id": "h",
        },
    )
    for _ in range(2):
        a = tokens.lookup(A)
        assert a is not None and (a.token_id, a.role) == ("a", Role.WRITER)
        h = tokens.lookup(HASHED)
        assert h is not None and (h.token_id, h.role) == ("h", Role.READER)
    for guess in (f"guess-{i}-of-many-tokens" for i in range(1000)):
        assert tokens.lookup(guess) is None
    assert tokens.lookup(A[:-1]) is None
    assert tokens.lookup(A + "x") is None
    assert len(tokens._found) == 2  # only what was found is remembered


def test_a_reload_forgets_every_remembered_token() -> None:
    tokens = store(
        {"token": A, "tenant": "t", "role": "writer", "id": "a"},
        {"token": B, "tenant": "t", "role": "writer", "id": "b"},
    )
    assert tokens.lookup(A) is not None
    assert tokens.lookup(B) is not None
    # A removed, B demoted and moved to another tenant.
    tokens.replace_with(store({"token": B, "tenant": "u", "role": "reader", "id": "b"}))
    assert tokens.lookup(A) is None
    b = tokens.lookup(B)
    assert b is not None and (b.tenant, b.role) == ("u", Role.READER)
    assert tokens.lookup(A) is None  # a refusal is not remembered as a find either
