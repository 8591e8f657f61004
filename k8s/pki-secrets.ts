// The Secrets every pod mounts for mTLS and token checks (k8s/render.ts's pkiSecrets):
// each identity's SDS file (certificate and key), the CA's, and the JWKS, from a PKI
// that scripts/pki.ts creates or renews in --dir (kept out of the repository).
//   npx tsx k8s/pki-secrets.ts [--dir .run/pki] | kubectl apply -f -
// Rerun it before the certificates' renewal window (scripts/pki.ts re-issues what
// is due) and apply again: Envoy reloads a Secret updated in place.
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { pathToFileURL } from "node:url";
import { stringify } from "yaml";
import { meshIdentities } from "../envoy/security.js";
import { ensurePki, pkiLayout } from "../scripts/lib/pki.js";
import { NAMESPACE, pkiSecrets, type PkiSecret } from "./render.js";

/** Secret manifests for the PKI in `dir` (which must exist: see ensurePki). */
export function renderPkiSecrets(dir: string): Record<string, unknown>[] {
  const pki = pkiLayout(dir);
  const secret = (s: PkiSecret, file: string) => ({
    apiVersion: "v1",
    kind: "Secret",
    metadata: { name: s.name, namespace: NAMESPACE, labels: { "app.kubernetes.io/part-of": "recsys-mesh" } },
    type: "Opaque",
    data: { [s.key]: readFileSync(file).toString("base64") },
  });
  return [
    ...meshIdentities().map((name) => secret(pkiSecrets.identity(name), pki.identity(name).sds.path)),
    secret(pkiSecrets.trust, pki.trust.path),
    secret(pkiSecrets.jwks, pki.jwks),
  ];
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const { values } = parseArgs({ options: { dir: { type: "string" } } });
  const pki = await ensurePki(values.dir ? { dir: values.dir } : {});
  if (pki.issued.length > 0) console.error(`${pki.dir}: issued ${pki.issued.join(", ")}`);
  process.stdout.write(renderPkiSecrets(pki.dir).map((o) => stringify(o)).join("---\n"));
}
