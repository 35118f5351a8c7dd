"""A throw-away certificate authority and broker certificate for the local broker's TLS listener.

Writes (once, into the folder it is given, files mode 0600): ``ca.pem`` (the CA certificate clients
trust: point ``STOCKFLOW_KAFKA_SSL_CA_FILE`` at it), ``broker.pem`` (the broker's PKCS#8 key followed by
its certificate, Kafka's PEM keystore) and ``client.pem``/``client.key`` (a client certificate the broker
accepts, for trying mutual TLS). For development and tests only: the keys are not encrypted and the
CA signs anything for 30 days.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 30


@dataclass(frozen=True)
class DevTls:
    folder: Path

    @property
    def ca_file(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def broker_pem(self) -> Path:
        return self.folder / "broker.pem"

    @property
    def client_cert(self) -> Path:
        return self.folder / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.folder / "client.key"


def ensure_dev_tls(folder: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> DevTls:
    """The CA and certificates in ``folder``, made if missing (the broker's names: ``hosts``)."""
    tls = DevTls(folder)
    if all(p.exists() for p in (tls.ca_file, tls.broker_pem, tls.client_cert, tls.client_key)):
        return tls
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)  # a little slack for clock skew
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stockflow dev CA")])
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    broker_key, broker_cert = _leaf(
        ca_key, ca_name, "stockflow dev broker", hosts, ExtendedKeyUsageOID.SERVER_AUTH, now
    )
    client_key, client_cert = _leaf(ca_key, ca_name, "stockflow dev client", (), ExtendedKeyUsageOID.CLIENT_AUTH, now)
    _write(tls.ca_file, _cert_pem(ca_cert))
    _write(tls.broker_pem, _key_pem(broker_key) + _cert_pem(broker_cert) + _cert_pem(ca_cert))
    _write(tls.client_cert, _cert_pem(client_cert))
    _write(tls.client_key, _key_pem(client_key))
    return tls


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey, now: dt.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
    )


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey, ca_name: x509.Name, cn: str, hosts: tuple[str, ...],
    usage: x509.ObjectIdentifier, now: dt.datetime,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]), ca_name, key.public_key(), now)
    builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if hosts:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # PKCS#8: the only private-key encoding Kafka's PEM keystore reads.
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())  # fmt: skip


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
