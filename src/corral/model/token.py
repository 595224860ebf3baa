"""A join token: what an operator hands to a new machine so that its agent can join the
cluster once (`corral agent --join URL --token ID.SECRET`), as kubeadm's bootstrap tokens.

Only a hash of the secret is kept. The id is public (listed, revoked by id); the secret is
shown once, when the token is made.

```
  create            expires_at passes
 --------> valid ---------------------> expired
             |   DELETE /v1/tokens/{id}
             +------------------------> revoked
```
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["JoinToken", "TokenState"]


class TokenState(StrEnum):
    VALID = "valid"
    EXPIRED = "expired"
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True, kw_only=True)
class JoinToken:
    id: str  # 6 characters [a-z0-9]
    secret_hash: str  # hex sha256 of the secret
    description: str = ""
    created_at: float
    expires_at: float | None  # None: never (only when asked for with ttl 0)
    revoked_at: float | None = None

    def state(self, now: float) -> TokenState:
        if self.revoked_at is not None:
            return TokenState.REVOKED
        if self.expires_at is not None and now >= self.expires_at:
            return TokenState.EXPIRED
        return TokenState.VALID
