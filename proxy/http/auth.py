"""Bearer tokens: each bound to one tenant and one role.

Tokens are configured as secrets or as SHA-256 digests (`token_sha256`), and looked up by
digest: a presented token is hashed, so the comparison never depends on how much of a secret
matches. A token is identified in logs and audit records by its `id` (or the first 12 hex digits
of its digest), never by its value.

Hashing is a tenth of the CPU of a get by id from the replica (SHA-256 through OpenSSL, a new
context per call), and a consumer sends the same token with every request, so a token that was
found is remembered by its text: the next request with it is one dict lookup. That lookup does
not compare secrets byte by byte either: a `str` key is compared only after its 64-bit hash
matches, and `str` hashes are keyed per process (SipHash), so how long a lookup takes says
nothing about how close a guess was. Only tokens that were found are remembered, so the memory
is bounded by the token list (the caller's headers hold the same text anyway); a reload starts
from an empty memory, so a token taken off the list is refused from the next request on.
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
        # Presented tokens that were found, by their text; filled by `lookup`.
        self._found: dict[str, Principal] = {}
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
        """Swap in a reloaded token list.

        The event loop's thread runs every lookup, and this replaces both maps before the
        next one: no request sees half of each, or a token the new list does not have."""
        self._by_digest = other._by_digest
        self._found = {}

    def lookup(self, presented: str) -> Principal | None:
        principal = self._found.get(presented)
        if principal is None:
            principal = self._by_digest.get(digest(presented))
            if principal is not None:
                self._found[presented] = principal
        return principal

    def tenants(self) -> list[str]:
        return sorted({p.tenant for p in self._by_digest.values()})

    def __len__(self) -> int:
        return len(self._by_digest)
