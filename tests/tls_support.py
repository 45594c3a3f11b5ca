"""A private PostgreSQL server with TLS from a throwaway CA (made here with `cryptography`) and every statement logged."""
from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import psycopg
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import devstack


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_ca(common_name: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_server_cert(ca_key, ca_cert, host: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(host)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


@dataclass
class TlsServer:
    server: devstack.PostgresServer
    root: Path
    ca_file: Path          # the CA that signed the server's certificate
    wrong_ca_file: Path    # another CA: verification against it must fail

    def url(self, ca_file: Path | None = None, sslmode: str = "verify-full") -> str:
        return f"{self.server.url}?sslmode={sslmode}&sslrootcert={ca_file or self.ca_file}"

    def log_text(self) -> str:
        return self.server.log_file.read_text(encoding="utf-8", errors="replace")


def start_tls_server() -> TlsServer:
    root = devstack.scratch_dir("tls")
    server = devstack.PostgresServer(root / "pg", fast=True).start()
    ca_key, ca_cert = make_ca("control plane test CA")
    _, wrong_ca = make_ca("someone else's CA")
    key, cert = make_server_cert(ca_key, ca_cert, devstack.LOOPBACK)
    owner = os.stat(server.data_dir)
    files = {"server.crt": _pem(cert), "server.key": key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())}
    for name, content in files.items():
        path = server.data_dir / name
        path.write_bytes(content)
        path.chmod(0o600)
        shutil.chown(path, owner.st_uid, owner.st_gid)  # postgres refuses a key it does not own
    (root / "ca.pem").write_bytes(_pem(ca_cert))
    (root / "wrong-ca.pem").write_bytes(_pem(wrong_ca))
    with psycopg.connect(server.url, autocommit=True) as conn:
        for setting, value in (("ssl", "on"), ("ssl_cert_file", "server.crt"), ("ssl_key_file", "server.key"),
                               ("log_statement", "all")):
            conn.execute(f"ALTER SYSTEM SET {setting} = '{value}'")
        conn.execute("SELECT pg_reload_conf()")
    tls = TlsServer(server=server, root=root, ca_file=root / "ca.pem", wrong_ca_file=root / "wrong-ca.pem")
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=30)
    while True:  # the reload is asynchronous: poll until TLS answers
        try:
            psycopg.connect(tls.url(), connect_timeout=5).close()
            return tls
        except psycopg.OperationalError:
            if datetime.datetime.now() > deadline:
                raise
