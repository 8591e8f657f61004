// Rendered Envoy configs read their certificates and JWKS from scripts/lib/pki.ts's layout
// at a fixed root (.run/pki locally, /etc/recsys/pki in a pod), and Envoy, even in
// --mode validate, refuses a path that does not exist. These helpers point a rendered
// config at a PKI the test made in a temporary directory.
import { writeFileSync } from "node:fs";
import { join } from "node:path";

/** The PKI roots the renderer writes into configs (envoy/render.ts placements). */
export const renderedPkiRoots = [".run/pki", "/etc/recsys/pki"];

/** The config text with every rendered PKI root replaced by `pkiDir`. */
export function withPkiAt(configText: string, pkiDir: string): string {
  return renderedPkiRoots.reduce((text, root) => text.replaceAll(`: ${root}/`, `: ${pkiDir}/`), configText);
}

/** Writes the config, pointed at `pkiDir`, into `dir` under `name`; returns its path. */
export function writeWithPki(dir: string, name: string, configText: string, pkiDir: string): string {
  const path = join(dir, name.replaceAll("/", "-"));
  writeFileSync(path, withPkiAt(configText, pkiDir));
  return path;
}
