"""A node's identity: how an agent joins the cluster once, and what it keeps so that it
never needs a join token again.

```
<agent data>/identity/
  node.key          the node's private key (0600): made here, never leaves the machine
  node.crt          signed by the cluster CA at join: CN = node name
  ca.crt            the cluster CA: the server must present a certificate it signed
  credential.json   (0600) {"name", "server", "credential", "agent_token"}; written last,
                    so its presence means the identity is complete
```

Joining (`corral agent --join https://HOST:PORT --token ID.SECRET`), as kubeadm does it:
1. Decide whom to trust before sending the token. `--ca-cert FILE` names the CA; or
   `--ca-cert-hash sha256:...` pins it: the CA certificate is fetched from the public
   `GET /v1/join/ca` over a connection not yet verified, and used only if the hash of its
   public key equals the pin. With neither, the agent refuses: an unverified server could
   be anyone, and the token would be theirs.
2. Make a key and a CSR, and `POST /v1/join` over TLS verified against that CA.
3. Keep the answer here. The credential authenticates the agent to the server; the
   certificate serves the agent's own HTTPS API (`agent/api.py`), and `agent_token` is what
   the server presents to that API.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from corral.client import ApiError, Client, ClientConfig, Unreachable, UntrustedServer
from corral.secretfile import write_private
from corral.server.pki import ca_cert_hash

__all__ = ["JoinError", "JoinUnreachable", "NodeIdentity", "check_ca", "fetch_pinned_ca", "join",
           "load_identity", "new_key_and_csr"]

_PIN = re.compile(r"^sha256:[0-9a-f]{64}$")


class JoinError(Exception):
    pass


class JoinUnreachable(JoinError):
    """The server did not answer: it may be starting; worth another try."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeIdentity:
    folder: Path
    name: str
    server: str
    credential: str
    agent_token: str

    @property
    def key_path(self) -> Path:
        return self.folder / "node.key"

    @property
    def cert_path(self) -> Path:
        return self.folder / "node.crt"

    @property
    def ca_path(self) -> Path:
        return self.folder / "ca.crt"


def load_identity(folder: Path) -> NodeIdentity | None:
    """The identity kept in `folder`, None if this node never joined."""
    try:
        data = json.loads((folder / "credential.json").read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise JoinError(f"unreadable node identity in {folder}: {exc}") from exc
    identity = NodeIdentity(folder=folder, name=str(data["name"]), server=str(data["server"]),
                            credential=str(data["credential"]),
                            agent_token=str(data["agent_token"]))
    for path in (identity.key_path, identity.cert_path, identity.ca_path):
        if not path.exists():
            raise JoinError(f"node identity in {folder} is missing {path.name}; remove the "
                            "folder and join again")
    return identity


def new_key_and_csr(name: str) -> tuple[bytes, str]:
    """A fresh P-256 key (PEM) and a CSR for it (the server sets the name it signs)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
           .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, csr.public_bytes(serialization.Encoding.PEM).decode()


def check_ca(pem: bytes, pin: str | None) -> x509.Certificate:
    """The CA certificate in `pem`, if it is one and, given a pin, matches it."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except (ValueError, x509.ExtensionNotFound) as exc:
        raise JoinError(f"not a CA certificate: {exc}") from exc
    if not is_ca:
        raise JoinError("the certificate offered as the cluster CA is not a CA")
    if pin is not None:
        got = ca_cert_hash(cert)
        if got != pin.lower():
            raise JoinError(f"the server's CA has hash {got}, not the pinned {pin.lower()}: "
                            "this is not the cluster you meant (or someone is in between); "
                            "check the URL and the hash (`corral token create` prints it)")
    return cert


async def fetch_pinned_ca(server: str, pin: str, *,
                          transport: httpx.AsyncBaseTransport | None = None) -> bytes:
    """The cluster CA from `server`, trusted only because its hash equals `pin`."""
    if not _PIN.match(pin.lower()):
        raise JoinError(f"--ca-cert-hash {pin!r}: expected sha256: and 64 hex digits")
    # Not verified on purpose: the pin, not the connection, is what we trust. Nothing
    # secret is sent on this connection.
    async with httpx.AsyncClient(base_url=server, verify=False, transport=transport,
                                 timeout=30) as http:
        try:
            resp = await http.get("/v1/join/ca")
        except httpx.TransportError as exc:
            raise JoinUnreachable(f"cannot reach {server} to fetch the cluster CA: "
                                  f"{exc or type(exc).__name__}") from exc
    if resp.status_code != 200:
        raise JoinError(f"{server} answered {resp.status_code} for the cluster CA: "
                        f"{resp.text[:200]}")
    check_ca(resp.content, pin)
    return resp.content


async def join(*, server: str, token: str, name: str, folder: Path, ca_pem: bytes,
               transport: httpx.AsyncBaseTransport | None = None) -> NodeIdentity:
    """Join as node `name` and keep the identity in `folder`."""
    trusted = check_ca(ca_pem, None)
    write_private(folder / "ca.crt", ca_pem)
    (folder / "ca.crt").chmod(0o644)
    key_pem, csr = new_key_and_csr(name)
    config = ClientConfig(addr=server, token="", cacert=str(folder / "ca.crt"))
    try:
        async with Client(config, transport=transport) as client:
            answer = await client.join(token=token.strip(), name=name, csr=csr)
    except ApiError as exc:
        raise JoinError(f"the server refused to let node {name} join ({exc.status}): "
                        f"{exc.message}") from exc
    except UntrustedServer as exc:
        raise JoinError(str(exc)) from exc
    except Unreachable as exc:
        raise JoinUnreachable(str(exc)) from exc
    if check_ca(str(answer["ca"]).encode(), None) != trusted:
        # The server signs with the CA we verified it against; anything else is a bug
        # or a swap, and must not become what we trust from now on.
        raise JoinError("the join answer names a different CA than the server presented")
    write_private(folder / "node.key", key_pem)
    (folder / "node.crt").write_text(answer["certificate"])
    identity = NodeIdentity(folder=folder, name=str(answer["name"]), server=server,
                            credential=str(answer["credential"]),
                            agent_token=str(answer["agent_token"]))
    write_private(folder / "credential.json", json.dumps(
        {"name": identity.name, "server": server, "credential": identity.credential,
         "agent_token": identity.agent_token}, sort_keys=True, indent=1) + "\n")
    return identity
