"""A node's identity, issued when its agent joins: the certificate the cluster CA signed
for its key, and the bearer credential it authenticates to the server with.

Kept by the server under `/nodes-auth/<name>`. The credential itself is never stored, only
its hash; `agent_token` is the secret the server presents to that node's agent API (the
server must send it, so it cannot be a hash; it is worth nothing to anyone but the node
that already holds it).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["NodeCredential"]


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeCredential:
    node: str
    secret_hash: str  # hex sha256 of the credential's secret part
    key_hash: str  # "sha256:<hex>" of the node key's SubjectPublicKeyInfo: who holds the name
    cert_serial: str  # hex
    cert_not_after: float
    agent_token: str
    token_id: str  # the join token it joined with
    joined_at: float
