"""A throw-away MariaDB server that speaks TLS with a certificate from a test CA, for the TLS tests.

The shared local server has no TLS; this one is started from the same mariadbd binary in a
temporary data directory on a free port, and stopped after the tests.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

MARIADBD = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
INSTALL_DB = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"


@dataclass(frozen=True)
class TlsServer:
    host: str
    port: int
    ca_file: Path  # the CA that signed the server's certificate


def _write_certificates(folder: Path, ca_pair=None) -> tuple[Path, Path, Path]:
    """The CA (``ca_pair``: a (certificate, private key) of cryptography's, or a new test CA) and a server
    certificate for 127.0.0.1 it signs."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = ca_pair[0] if ca_pair else (x509.CertificateBuilder().subject_name(name("pipeline test CA")).issuer_name(name("pipeline test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    if ca_pair:
        ca_key = ca_pair[1]
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = folder / "ca.pem", folder / "server.pem", folder / "server-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return paths


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(folder: Path, *, grant_tables: bool = False, ca_pair=None):
    """Start the server; returns (TlsServer, stop function). Raises RuntimeError if it does not come up.

    Without ``grant_tables`` any user and password log in; with it, accounts and passwords are
    checked as usual (``root`` from 127.0.0.1 has no password). ``ca_pair``: the CA that signs the server's
    certificate (default: a new test CA)."""
    ca, cert, key = _write_certificates(folder, ca_pair)
    data = folder / "data"
    install = subprocess.run([INSTALL_DB, "--no-defaults", f"--datadir={data}", "--user=root", "--skip-test-db",
                              "--auth-root-authentication-method=normal"], capture_output=True, text=True)
    if install.returncode != 0:
        raise RuntimeError(f"mariadb-install-db failed: {install.stderr[-2000:]}")
    port = _free_port()
    proc = subprocess.Popen(
        [MARIADBD, "--no-defaults", f"--datadir={data}", f"--port={port}", "--bind-address=127.0.0.1",
         f"--socket={folder / 'mysqld.sock'}", f"--pid-file={folder / 'mysqld.pid'}", "--user=root",
         *([] if grant_tables else ["--skip-grant-tables"]), f"--ssl-ca={ca}", f"--ssl-cert={cert}", f"--ssl-key={key}",
         f"--log-error={folder / 'error.log'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return TlsServer("127.0.0.1", port, ca), stop
        except OSError:
            time.sleep(0.2)
    stop()
    log = (folder / "error.log").read_text()[-2000:] if (folder / "error.log").exists() else ""
    raise RuntimeError(f"the TLS MariaDB did not start on port {port}: {log}")
