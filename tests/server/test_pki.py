"""The cluster CA: made once and reused, server certificates issued again only when
needed, node certificates whose name and usages the server decides."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from corral.agent.identity import new_key_and_csr
from corral.server.pki import (
    NODE_VALIDITY,
    SERVER_VALIDITY,
    PkiError,
    ca_cert_hash,
    ensure_server_cert,
    load_or_create_pki,
    server_sans,
    sign_node_csr,
    verify_node_cert,
)

NOW = 1_700_000_000.0


def _sans(cert: x509.Certificate) -> set[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in ext.get_values_for_type(x509.IPAddress)} | \
        set(ext.get_values_for_type(x509.DNSName))


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_the_ca_is_made_once_with_private_keys_and_reused(tmp_path: Path) -> None:
    first = load_or_create_pki(tmp_path / "pki", now=NOW)
    assert first.created
    assert _mode(tmp_path / "pki" / "ca.key") == 0o600
    assert _mode(tmp_path / "pki" / "ca.crt") == 0o644
    assert _mode(tmp_path / "pki") == 0o700
    again = load_or_create_pki(tmp_path / "pki", now=NOW + 10)
    assert not again.created and again.ca_hash == first.ca_hash
    assert again.ca_cert == first.ca_cert
    assert first.ca_hash.startswith("sha256:") and len(first.ca_hash) == 7 + 64
    basic = first.ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca
    other = load_or_create_pki(tmp_path / "other", now=NOW)
    assert other.ca_hash != first.ca_hash


def test_half_a_ca_is_an_error_not_a_new_ca(tmp_path: Path) -> None:
    load_or_create_pki(tmp_path, now=NOW)
    (tmp_path / "ca.key").unlink()
    with pytest.raises(PkiError, match="only one of"):
        load_or_create_pki(tmp_path, now=NOW)


def test_server_certificate_is_reissued_only_when_needed(tmp_path: Path) -> None:
    pki = load_or_create_pki(tmp_path, now=NOW)
    sans = server_sans("10.1.2.3", ["corral.example.com"])
    assert {"10.1.2.3", "corral.example.com", "127.0.0.1", "localhost"} <= set(sans)
    assert ensure_server_cert(pki, sans=sans, now=NOW)
    cert = x509.load_pem_x509_certificate(pki.server_cert_path.read_bytes())
    assert _sans(cert) == set(sans)
    cert.verify_directly_issued_by(pki.ca_cert)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert _mode(pki.server_key_path) == 0o600
    assert not ensure_server_cert(pki, sans=reversed(sans), now=NOW + 86400)
    assert ensure_server_cert(pki, sans=[*sans, "10.9.9.9"], now=NOW + 86400)
    # close to expiry: issued again
    assert ensure_server_cert(pki, sans=[*sans, "10.9.9.9"],
                              now=NOW + 86400 + SERVER_VALIDITY - 7 * 86400)
    # another CA (its folder replaced): issued again
    pki.server_cert_path.rename(tmp_path / "keep.crt")
    other = load_or_create_pki(tmp_path / "o", now=NOW)
    (tmp_path / "keep.crt").rename(other.server_cert_path)
    pki.server_key_path.rename(other.server_key_path)
    assert ensure_server_cert(other, sans=sans, now=NOW)


def test_unspecified_host_names_every_local_address() -> None:
    sans = server_sans("0.0.0.0")
    assert "0.0.0.0" not in sans and "127.0.0.1" in sans


def test_a_node_certificate_has_the_name_the_server_decides(tmp_path: Path) -> None:
    pki = load_or_create_pki(tmp_path, now=NOW)
    # the CSR asks for another name, and a SAN the server answers to: both ignored
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]),
                          critical=False)
           .sign(key, hashes.SHA256()))
    cert = sign_node_csr(pki, csr.public_bytes(serialization.Encoding.PEM), name="web-1",
                         now=NOW)
    assert verify_node_cert(pki.ca_cert, cert, now=NOW) == "web-1"
    assert _sans(cert) == {"web-1.node.corral"}
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == \
        key.public_key().public_bytes(serialization.Encoding.DER,
                                      serialization.PublicFormat.SubjectPublicKeyInfo)
    validity = cert.not_valid_after_utc.timestamp() - NOW
    assert validity == pytest.approx(NODE_VALIDITY)


def test_node_certificates_that_must_not_verify(tmp_path: Path) -> None:
    pki = load_or_create_pki(tmp_path / "a", now=NOW)
    other = load_or_create_pki(tmp_path / "b", now=NOW)
    _, csr = new_key_and_csr("n1")
    cert = sign_node_csr(pki, csr, name="n1", now=NOW)
    with pytest.raises(PkiError, match="not signed"):
        verify_node_cert(other.ca_cert, cert, now=NOW)
    with pytest.raises(PkiError, match="validity"):
        verify_node_cert(pki.ca_cert, cert, now=NOW + NODE_VALIDITY + 1)
    ensure_server_cert(pki, sans=["127.0.0.1"], now=NOW)
    server = x509.load_pem_x509_certificate(pki.server_cert_path.read_bytes())
    with pytest.raises(PkiError, match="not a node certificate"):
        verify_node_cert(pki.ca_cert, server, now=NOW)


def test_bad_requests_are_refused(tmp_path: Path) -> None:
    pki = load_or_create_pki(tmp_path, now=NOW)
    with pytest.raises(PkiError, match="PEM"):
        sign_node_csr(pki, "nonsense", name="n1", now=NOW)
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "n1")]))
           .sign(weak, hashes.SHA256()))
    with pytest.raises(PkiError, match="2048"):
        sign_node_csr(pki, csr.public_bytes(serialization.Encoding.PEM), name="n1", now=NOW)


def test_the_pin_is_the_hash_of_the_public_key(tmp_path: Path) -> None:
    import hashlib

    pki = load_or_create_pki(tmp_path, now=NOW)
    spki = pki.ca_cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert ca_cert_hash(pki.ca_cert) == "sha256:" + hashlib.sha256(spki).hexdigest()
