// The local PKI for mTLS between Envoys and the JWT signing key, under .run/pki/
// (gitignored). Idempotent: a run keeps every file that is still good and issues what
// is missing, expiring or signed by another CA.
// Certificates come from openssl: a CA, and one certificate per mesh identity (the
// edge and each service) with the URI SAN spiffe://recsys.local/ns/recsys/sa/<name>.
// Each identity's certificate and key also go, together, into one SDS file that
// Envoy watches; a new one is renamed into place, so Envoy reloads it whole.
import { createHash, createPublicKey, generateKeyPairSync, randomBytes, X509Certificate, type JsonWebKey } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { stringify } from "yaml";
import { meshIdentities, spiffeId, type SdsFile } from "../../envoy/security.js";
import { runCommand } from "./processes.js";
import { ROOT } from "./tools.js";

const DAY_MS = 86_400_000;
const caValidDays = 3650;
const certValidDays = 30;
/** A certificate with less left than this is re-issued by the next run. */
const renewBeforeDays = 10;

export interface IdentityFiles {
  name: string;
  cert: string;
  key: string;
  /** Certificate and key together, as the SDS secret Envoy watches. */
  sds: SdsFile;
}

export interface Pki {
  dir: string;
  caCert: string;
  caKey: string;
  /** The CA as a validation-context secret (SDS). */
  trust: SdsFile;
  identity(name: string): IdentityFiles;
  /** ES256 private key that signs dev tokens (PKCS#8 PEM). */
  jwtKey: string;
  /** The public half, as the JWKS file the edge's jwt_authn reads. */
  jwks: string;
}

export const defaultPkiDir = join(ROOT, ".run", "pki");

export function pkiLayout(dir: string = defaultPkiDir): Pki {
  const trustDir = join(dir, "trust");
  return {
    dir,
    caCert: join(dir, "ca", "ca.pem"),
    caKey: join(dir, "ca", "ca.key.pem"),
    trust: { name: "recsys_ca", path: join(trustDir, "sds-validation.yaml"), directory: trustDir },
    identity: (name) => {
      const own = join(dir, "identities", name);
      return { name, cert: join(own, "cert.pem"), key: join(own, "key.pem"), sds: { name, path: join(own, "sds-tls.yaml"), directory: own } };
    },
    jwtKey: join(dir, "jwt", "signing-key.pem"),
    jwks: join(dir, "jwt", "jwks.json"),
  };
}

/** Writes through a temporary file and a rename, so a watcher never sees half a file. */
function writeAtomic(path: string, text: string, mode = 0o644): void {
  mkdirSync(join(path, ".."), { recursive: true });
  const tmp = `${path}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`;
  writeFileSync(tmp, text, { mode });
  renameSync(tmp, path);
}

async function openssl(args: string[]): Promise<void> {
  const { code, stderr } = await runCommand("openssl", args);
  if (code !== 0) throw new Error(`openssl ${args[0]} failed (${code}): ${stderr.trim()}`);
}

function sdsDocument(resource: Record<string, unknown>): string {
  return stringify({ resources: [{ "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret", ...resource }] });
}

async function createCa(pki: Pki, work: string): Promise<void> {
  const key = join(work, "ca.key.pem");
  const cert = join(work, "ca.pem");
  await openssl([
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert, "-days", String(caValidDays), "-sha256",
    "-subj", "/O=recsys/CN=recsys local CA",
    "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
    "-addext", "keyUsage=critical,keyCertSign,cRLSign",
  ]);
  writeAtomic(pki.caKey, readFileSync(key, "utf8"), 0o600);
  writeAtomic(pki.caCert, readFileSync(cert, "utf8"));
}

function caIsGood(pki: Pki): boolean {
  if (!existsSync(pki.caCert) || !existsSync(pki.caKey)) return false;
  const ca = new X509Certificate(readFileSync(pki.caCert));
  return ca.ca && Date.parse(ca.validTo) - Date.now() > renewBeforeDays * DAY_MS;
}

function identityIsGood(pki: Pki, files: IdentityFiles): boolean {
  if (![files.cert, files.key, files.sds.path].every((f) => existsSync(f))) return false;
  const cert = new X509Certificate(readFileSync(files.cert));
  const ca = new X509Certificate(readFileSync(pki.caCert));
  return (
    cert.checkIssued(ca) &&
    cert.verify(ca.publicKey) &&
    cert.subjectAltName === `URI:${spiffeId(files.name)}` &&
    Date.parse(cert.validTo) - Date.now() > renewBeforeDays * DAY_MS
  );
}

/** Issues (or re-issues) one identity's key and certificate and writes its SDS file last. */
async function issueIdentity(pki: Pki, files: IdentityFiles, work: string): Promise<void> {
  const key = join(work, `${files.name}.key.pem`);
  const csr = join(work, `${files.name}.csr`);
  const cert = join(work, `${files.name}.pem`);
  const extensions = join(work, `${files.name}.ext`);
  writeFileSync(
    extensions,
    [
      "basicConstraints=critical,CA:FALSE",
      "keyUsage=critical,digitalSignature",
      "extendedKeyUsage=serverAuth,clientAuth",
      `subjectAltName=critical,URI:${spiffeId(files.name)}`,
    ].join("\n"),
  );
  // PKCS#8 key (what Envoy's BoringSSL, node:tls and openssl all read) and its request in one go.
  await openssl(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", csr, "-subj", `/O=recsys/OU=${files.name}`]);
  await openssl([
    "x509", "-req", "-in", csr, "-CA", pki.caCert, "-CAkey", pki.caKey, "-out", cert, "-days", String(certValidDays),
    "-sha256", "-set_serial", `0x${randomBytes(16).toString("hex")}`, "-extfile", extensions,
  ]);
  const certPem = readFileSync(cert, "utf8");
  const keyPem = readFileSync(key, "utf8");
  writeAtomic(files.key, keyPem, 0o600);
  writeAtomic(files.cert, certPem);
  writeAtomic(
    files.sds.path,
    sdsDocument({ name: files.sds.name, tls_certificate: { certificate_chain: { inline_string: certPem }, private_key: { inline_string: keyPem } } }),
    0o600,
  );
}

/** RFC 7638 thumbprint of an EC public key: the key id in the JWKS and in tokens' headers. */
export function jwkThumbprint(jwk: JsonWebKey): string {
  const canonical = JSON.stringify({ crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y });
  return createHash("sha256").update(canonical).digest("base64url");
}

function ensureJwtKey(pki: Pki): boolean {
  if (existsSync(pki.jwtKey) && existsSync(pki.jwks)) return false;
  const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const jwk = createPublicKey(privateKey).export({ format: "jwk" });
  writeAtomic(pki.jwtKey, privateKey.export({ type: "pkcs8", format: "pem" }).toString(), 0o600);
  writeAtomic(pki.jwks, JSON.stringify({ keys: [{ ...jwk, kid: jwkThumbprint(jwk), alg: "ES256", use: "sig" }] }, null, 2));
  return true;
}

export interface EnsurePkiOptions {
  dir?: string;
  /** Defaults to the edge and every topology service. */
  identities?: string[];
  /** Re-issue every identity's certificate even when it is still good. */
  rotate?: boolean;
}

/** Creates or renews what is missing or stale; returns the layout and what it (re)issued. */
export async function ensurePki(options: EnsurePkiOptions = {}): Promise<Pki & { issued: string[] }> {
  const pki = pkiLayout(options.dir);
  const issued: string[] = [];
  const work = mkdtempSync(join(tmpdir(), "recsys-pki-"));
  try {
    if (!caIsGood(pki)) {
      await createCa(pki, work);
      issued.push("ca");
    }
    const trust = sdsDocument({ name: pki.trust.name, validation_context: { trusted_ca: { inline_string: readFileSync(pki.caCert, "utf8") } } });
    if (!existsSync(pki.trust.path) || readFileSync(pki.trust.path, "utf8") !== trust) writeAtomic(pki.trust.path, trust);
    const due = (options.identities ?? meshIdentities()).filter((name) => options.rotate || !identityIsGood(pki, pki.identity(name)));
    await Promise.all(due.map((name) => issueIdentity(pki, pki.identity(name), work)));
    issued.push(...due);
    if (ensureJwtKey(pki)) issued.push("jwt");
    chmodSync(join(pki.dir, "ca"), 0o700);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  return { ...pki, issued };
}
