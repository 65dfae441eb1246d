"""Bearer tokens: each bound to one tenant and one role.

Tokens are kept only as SHA-256 digests; a presented token is hashed and looked up, so the
comparison never depends on how much of a secret matches, and the file may hold digests
(`token_sha256`) instead of the secrets themselves. A token is identified in logs and audit
records by its `id` (or the first 12 hex digits of its digest), never by its value.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import IntEnum
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, model_validator

from proxy.registry.models import ID_PATTERN


class Role(IntEnum):
    READER = 1
    WRITER = 2
    ADMIN = 3


@dataclass(frozen=True, slots=True)
class Principal:
    token_id: str
    tenant: str
    role: Role


class TokenSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: Annotated[str, StringConstraints(min_length=16, max_length=512)] | None = None
    token_sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = None
    tenant: Annotated[str, StringConstraints(pattern=ID_PATTERN)]
    role: Annotated[str, Field(pattern=r"^(reader|writer|admin)$")]
    id: Annotated[str, StringConstraints(pattern=ID_PATTERN)] | None = None

    @model_validator(mode="after")
    def _one_secret(self) -> TokenSpec:
        if (self.token is None) == (self.token_sha256 is None):
            raise ValueError("each token needs exactly one of 'token' or 'token_sha256'")
        return self


_SPECS = TypeAdapter(list[TokenSpec])


class TokenError(ValueError):
    pass


def digest(token: str) -> str:
    # Header bytes that are not UTF-8 arrive surrogate-escaped; they hash, and match nothing.
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


class TokenStore:
    def __init__(self, specs: list[TokenSpec]) -> None:
        self._by_digest: dict[str, Principal] = {}
        for spec in specs:
            d = spec.token_sha256 or digest(spec.token or "")
            token_id = spec.id or d[:12]
            self._by_digest[d] = Principal(token_id, spec.tenant, Role[spec.role.upper()])

    @classmethod
    def from_json(cls, text: str | None) -> TokenStore:
        if not text:
            return cls([])
        try:
            raw = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise TokenError(f"tokens are not valid JSON: {exc.msg}") from None
        try:
            return cls(_SPECS.validate_python(raw))
        except ValueError as exc:
            # pydantic echoes input values; never let a token reach a message
            first: dict[str, Any] = getattr(exc, "errors", lambda: [{}])()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            raise TokenError(
                f"invalid token list at {where or 'top'}: {first.get('msg')}"
            ) from None

    def replace_with(self, other: TokenStore) -> None:
        """Swap in a reloaded token list; one assignment, so no request sees half of each."""
        self._by_digest = other._by_digest

    def lookup(self, presented: str) -> Principal | None:
        # The lookup compares digests, never the secret: its timing says nothing about how
        # much of a presented token was right.
        return self._by_digest.get(digest(presented))

    def tenants(self) -> list[str]:
        return sorted({p.tenant for p in self._by_digest.values()})

    def __len__(self) -> int:
        return len(self._by_digest)
