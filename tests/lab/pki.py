"""A throw-away PKI for the lab's openvpn servers and clients (openssl, EC P-256)."""

from __future__ import annotations

import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from tests.lab.procs import run

OPENVPN = shutil.which("openvpn") or "/usr/sbin/openvpn"
OPENSSL_CNF = Path(__file__).with_name("files") / "openssl.cnf"


@dataclass(frozen=True)
class Pki:
    """A throw-away CA with a server and a client certificate (EC P-256), made with openssl."""

    directory: Path
    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    tls_crypt: Path | None

    @classmethod
    def create(cls, directory: Path, *, tls_crypt: bool = True, days: int = 7) -> Pki:
        """Generate the PKI in ``directory`` (created if missing; keys are mode 0600)."""
        directory.mkdir(parents=True, exist_ok=True)
        cnf = directory / "openssl.cnf"
        shutil.copyfile(OPENSSL_CNF, cnf)
        ca, ca_key = directory / "ca.crt", directory / "ca.key"
        _genkey(ca_key)
        run(["openssl", "req", "-config", str(cnf), "-new", "-x509", "-key", str(ca_key),
             "-subj", "/CN=iservice lab CA", "-days", str(days), "-extensions", "ca",
             "-out", str(ca)])
        pki = cls(directory=directory, ca=ca, ca_key=ca_key,
                  server_cert=directory / "server.crt", server_key=directory / "server.key",
                  client_cert=directory / "client.crt", client_key=directory / "client.key",
                  tls_crypt=directory / "tls-crypt.key" if tls_crypt else None)
        pki._issue("server", "server", pki.server_cert, pki.server_key, days=days, serial=2)
        pki._issue("client", "client", pki.client_cert, pki.client_key, days=days, serial=3)
        if pki.tls_crypt is not None:
            run([OPENVPN, "--genkey", "tls-crypt", str(pki.tls_crypt)])
            pki.tls_crypt.chmod(0o600)
        return pki

    def issue_client(self, common_name: str, *, days: int = 7) -> tuple[Path, Path]:
        """Issue one more client certificate; returns (cert, key) paths."""
        cert = self.directory / f"{common_name}.crt"
        key = self.directory / f"{common_name}.key"
        self._issue("client", common_name, cert, key, days=days,
                    serial=secrets.randbits(63) | 1 << 62)
        return cert, key

    def _issue(self, kind: str, cn: str, cert: Path, key: Path, *, days: int, serial: int) -> None:
        cnf = self.directory / "openssl.cnf"
        csr = cert.with_suffix(".csr")
        _genkey(key)
        run(["openssl", "req", "-config", str(cnf), "-new", "-key", str(key),
             "-subj", f"/CN={cn}", "-out", str(csr)])
        run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(self.ca),
             "-CAkey", str(self.ca_key), "-set_serial", str(serial), "-days", str(days),
             "-extfile", str(cnf), "-extensions", kind, "-out", str(cert)])
        csr.unlink()

    def inline_client_block(self, cert: Path | None = None, key: Path | None = None) -> str:
        """``<ca>…</ca><cert>…</cert><key>…</key>[<tls-crypt>…</tls-crypt>]`` for a config."""
        parts = [("ca", self.ca), ("cert", cert or self.client_cert),
                 ("key", key or self.client_key)]
        if self.tls_crypt is not None:
            parts.append(("tls-crypt", self.tls_crypt))
        return "".join(f"<{tag}>\n{path.read_text().strip()}\n</{tag}>\n" for tag, path in parts)


def _genkey(path: Path) -> None:
    run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-out", str(path)])
    path.chmod(0o600)
