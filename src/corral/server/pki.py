"""The cluster's certificate authority: made at the server's first start, it signs the
server's own certificate and one certificate per node, issued when the node joins.

```
<server data>/pki/
  ca.crt       the cluster CA (public: agents and the CLI verify the server against it)
  ca.key       its key (0600; whoever holds it can mint identities)
  server.crt   the API server's certificate, signed by the CA
  server.key   (0600)
```

Keys are ECDSA P-256: every TLS stack speaks it (Ed25519 certificates are still refused by
some clients), and a key is made in a millisecond, so an agent joining costs nothing.

The server certificate names every address the server is reached at (SANs); it is issued
again on start when that set changes, when it is within `RENEW_BEFORE` of expiring, or when
the CA changed. Node certificates carry CN = node name and one DNS name,
`<name>.node.corral`, which no server ever answers to: a node's certificate can never pass
for the server's, even for a node named `localhost`. The server reaches agents by address
but checks that name (TLS SNI), so the certificate proves which node answers.

Several API servers over one etcd share this folder's CA: copy `ca.crt` and `ca.key` to
each before its first start (each then makes its own server certificate).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from corral.secretfile import write_private

__all__ = [
    "CA_VALIDITY", "NODE_DNS_SUFFIX", "NODE_VALIDITY", "RENEW_BEFORE", "SERVER_VALIDITY",
    "ClusterPki", "PkiError", "ca_cert_hash", "ensure_server_cert", "load_or_create_pki",
    "node_dns_name", "public_key_hash", "server_sans", "sign_node_csr", "verify_node_cert",
]

DAY = 86400.0
CA_VALIDITY = 3650 * DAY
SERVER_VALIDITY = 365 * DAY
NODE_VALIDITY = 365 * DAY
RENEW_BEFORE = 30 * DAY
NODE_DNS_SUFFIX = "node.corral"
# Certificates start a little in the past: a machine whose clock is slightly behind must
# not see a brand-new certificate as "not yet valid".
_BACKDATE = 3600.0


class PkiError(Exception):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterPki:
    folder: Path
    ca_cert: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey
    created: bool  # the CA was made by this start (the cluster's first)

    @property
    def ca_cert_path(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def server_cert_path(self) -> Path:
        return self.folder / "server.crt"

    @property
    def server_key_path(self) -> Path:
        return self.folder / "server.key"

    @property
    def ca_pem(self) -> bytes:
        return self.ca_cert.public_bytes(serialization.Encoding.PEM)

    @property
    def ca_hash(self) -> str:
        return ca_cert_hash(self.ca_cert)


def public_key_hash(key: object) -> str:
    """`sha256:<hex>` of a public key's DER SubjectPublicKeyInfo (kubeadm's format)."""
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey |
                      ed25519.Ed25519PublicKey):
        raise PkiError(f"unsupported key type {type(key).__name__}")
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def ca_cert_hash(cert: x509.Certificate) -> str:
    """What `--ca-cert-hash` pins: the hash of the CA's public key, not of the certificate,
    so a CA certificate re-issued for the same key keeps the pin valid."""
    return public_key_hash(cert.public_key())


def node_dns_name(name: str) -> str:
    return f"{name}.{NODE_DNS_SUFFIX}"


def _time(t: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(t, tz=datetime.UTC)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path}: expected an EC private key")
    return key


def load_or_create_pki(folder: Path, *, now: float) -> ClusterPki:
    """The CA in `folder`, made (key first, 0600) if there is none yet."""
    cert_path, key_path = folder / "ca.crt", folder / "ca.key"
    if cert_path.exists() or key_path.exists():
        if not (cert_path.exists() and key_path.exists()):
            raise PkiError(f"{folder} holds only one of ca.crt and ca.key: restore the "
                           "missing one (a new CA would orphan every joined node)")
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = _load_key(key_path)
        except ValueError as exc:
            raise PkiError(f"unreadable cluster CA in {folder}: {exc}") from exc
        if public_key_hash(cert.public_key()) != public_key_hash(key.public_key()):
            raise PkiError(f"{cert_path} and {key_path} do not belong together")
        return ClusterPki(folder=folder, ca_cert=cert, ca_key=key, created=False)
    key = ec.generate_private_key(ec.SECP256R1())
    # A unique subject per cluster: two clusters' CAs are never mistaken for each other.
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "corral"),
        x509.NameAttribute(NameOID.COMMON_NAME,
                           f"corral cluster CA {public_key_hash(key.public_key())[7:19]}")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_time(now - _BACKDATE)).not_valid_after(_time(now + CA_VALIDITY))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    write_private(key_path, _pem_key(key))
    write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    cert_path.chmod(0o644)  # not a secret (the folder decides who may read it)
    return ClusterPki(folder=folder, ca_cert=cert, ca_key=key, created=True)


def _local_addresses() -> list[str]:
    """Every address of this machine's interfaces (for a server bound to 0.0.0.0)."""
    found = []
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            if addr.family in (socket.AF_INET, socket.AF_INET6):
                ip = addr.address.split("%", 1)[0]  # drop an IPv6 zone
                if not ipaddress.ip_address(ip).is_link_local:
                    found.append(ip)
    return found


def server_sans(host: str, advertise: Iterable[str] = ()) -> tuple[str, ...]:
    """The names and addresses the server certificate must hold: loopback, this machine's
    hostname, `host` (every interface address when it is 0.0.0.0 or ::) and each
    `--advertise-address`. Sorted, so an unchanged set never causes a new certificate."""
    names = {"localhost", "127.0.0.1", "::1", socket.gethostname().lower()}
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        names.add(host.lower())
    else:
        if ip.is_unspecified:
            names.update(_local_addresses())
        else:
            names.add(str(ip))
    names.update(a.strip().lower() for a in advertise if a.strip())
    return tuple(sorted(n for n in names if n))


def _general_names(sans: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for san in sans:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            out.append(x509.DNSName(san))
    return out


def _cert_sans(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    names = [str(ip) for ip in ext.get_values_for_type(x509.IPAddress)]
    names += [d.lower() for d in ext.get_values_for_type(x509.DNSName)]
    return tuple(sorted(names))


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _leaf(pki: ClusterPki, *, subject: x509.Name, public_key: object, sans: Iterable[str],
          now: float, validity: float) -> x509.Certificate:
    if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey |
                      ed25519.Ed25519PublicKey):
        raise PkiError(f"unsupported key type {type(public_key).__name__}")
    not_after = min(now + validity, pki.ca_cert.not_valid_after_utc.timestamp())
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(pki.ca_cert.subject)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(_time(now - _BACKDATE)).not_valid_after(_time(not_after))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_encipherment=isinstance(public_key,
                                                                    rsa.RSAPublicKey),
                content_commitment=False, data_encipherment=False, key_agreement=False,
                key_cert_sign=False, crl_sign=False, encipher_only=False,
                decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(_general_names(sans)), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                pki.ca_key.public_key()), critical=False)
            .sign(pki.ca_key, hashes.SHA256()))


def ensure_server_cert(pki: ClusterPki, *, sans: Iterable[str], now: float) -> bool:
    """Make sure `server.crt`/`server.key` exist, are signed by the CA, name exactly `sans`
    and are not about to expire; issue them again otherwise. True if they were issued."""
    wanted = tuple(sorted(set(_cert_sans_of(sans))))
    cert_path, key_path = pki.server_cert_path, pki.server_key_path
    if cert_path.exists() and key_path.exists():
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = _load_key(key_path)
        except (ValueError, PkiError):
            pass
        else:
            if (_issued_by(cert, pki.ca_cert) and _cert_sans(cert) == wanted
                    and cert.not_valid_after_utc.timestamp() - now > RENEW_BEFORE
                    and public_key_hash(cert.public_key()) ==
                    public_key_hash(key.public_key())):
                return False
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "corral"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "corral server")])
    cert = _leaf(pki, subject=subject, public_key=key.public_key(), sans=wanted, now=now,
                 validity=SERVER_VALIDITY)
    write_private(key_path, _pem_key(key))
    write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    cert_path.chmod(0o644)
    return True


def _cert_sans_of(sans: Iterable[str]) -> list[str]:
    """SANs as `_cert_sans` reads them back (IPs in canonical form), for comparison."""
    out = []
    for san in sans:
        try:
            out.append(str(ipaddress.ip_address(san)))
        except ValueError:
            out.append(san.lower())
    return out


def sign_node_csr(pki: ClusterPki, csr_pem: bytes | str, *, name: str, now: float,
                  validity: float = NODE_VALIDITY) -> x509.Certificate:
    """A node certificate for the key in `csr_pem`, whose self-signature proves the caller
    holds that key. Only the key is taken from the request: the server decides the name
    (CN = `name`, SAN `<name>.node.corral`), usages and validity."""
    raw = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
    try:
        csr = x509.load_pem_x509_csr(raw)
    except ValueError as exc:
        raise PkiError(f"not a PEM certificate signing request: {exc}") from exc
    if not csr.is_signature_valid:
        raise PkiError("the certificate signing request's signature does not verify")
    key = csr.public_key()
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        raise PkiError(f"RSA key of {key.key_size} bits; at least 2048 are needed")
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.key_size < 256:
        raise PkiError(f"EC curve {key.curve.name} is too weak; use P-256 or stronger")
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "corral nodes"),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return _leaf(pki, subject=subject, public_key=key, sans=[node_dns_name(name)], now=now,
                 validity=validity)


def verify_node_cert(ca_cert: x509.Certificate, cert: x509.Certificate, *,
                     now: float) -> str:
    """The node name a certificate proves, after checking it was signed by `ca_cert`, is in
    its validity period and is a node certificate; raises PkiError otherwise."""
    if not _issued_by(cert, ca_cert):
        raise PkiError("certificate not signed by the cluster CA")
    if not cert.not_valid_before_utc.timestamp() <= now <= \
            cert.not_valid_after_utc.timestamp():
        raise PkiError(f"certificate outside its validity ({cert.not_valid_before_utc} to "
                       f"{cert.not_valid_after_utc})")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        raise PkiError("certificate has no single common name")
    name = str(names[0].value)
    if _cert_sans(cert) != (node_dns_name(name),):
        raise PkiError(f"not a node certificate (SANs {_cert_sans(cert)})")
    return name
