// Who may call an admin RPC. The edge verifies tokens too (Envoy's jwt_authn and
// RBAC); the app checks again, so a call that reaches it some other way (a sidecar
// misconfigured, an operator on the pod) still needs a credential. Two credentials:
// a JWT with role "admin" signed by a key in JWKS_PATH (what the edge forwards), or
// the static ADMIN_TOKEN where an operator set one. Neither has a default: with
// neither configured, no admin call is accepted.
import { createPublicKey, verify, type KeyObject } from "node:crypto";
import { readFileSync } from "node:fs";
import { Code, statusError } from "./errors.js";
import { Reason } from "./reasons.js";

/** The issuer and audience of the tokens the edge accepts (envoy/security.ts uses the same). */
export const JWT_ISSUER = "https://auth.recsys.local";
export const JWT_AUDIENCE = "recsys-edge";

export interface AdminCredentials {
  ADMIN_TOKEN?: string | undefined;
  JWKS_PATH?: string | undefined;
}

const keysByPath = new Map<string, Map<string, KeyObject>>();

/** The JWKS file's ES256 keys by kid, read once per process. */
function signingKeys(path: string): Map<string, KeyObject> {
  let keys = keysByPath.get(path);
  if (!keys) {
    const jwks = JSON.parse(readFileSync(path, "utf8")) as { keys: (JsonWebKey & { kid?: string })[] };
    keys = new Map(jwks.keys.map((jwk, i) => [jwk.kid ?? String(i), createPublicKey({ key: jwk as import("node:crypto").JsonWebKey, format: "jwk" })]));
    keysByPath.set(path, keys);
  }
  return keys;
}

function decode(part: string): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(Buffer.from(part, "base64url").toString("utf8"));
    return value && typeof value === "object" ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** The payload of a valid, unexpired ES256 token for our issuer and audience, else undefined. */
export function verifiedClaims(token: string, jwksPath: string, nowSeconds = Date.now() / 1000): Record<string, unknown> | undefined {
  const [headerPart, payloadPart, signature] = token.split(".");
  if (!headerPart || !payloadPart || !signature) return undefined;
  const header = decode(headerPart);
  const payload = decode(payloadPart);
  if (header?.alg !== "ES256" || !payload) return undefined;
  const keys = signingKeys(jwksPath);
  const candidates = typeof header.kid === "string" ? [keys.get(header.kid)].filter((k) => k !== undefined) : [...keys.values()];
  const signed = Buffer.from(`${headerPart}.${payloadPart}`);
  const valid = candidates.some((key) => verify("sha256", signed, { key, dsaEncoding: "ieee-p1363" }, Buffer.from(signature, "base64url")));
  if (!valid) return undefined;
  const audience = Array.isArray(payload.aud) ? payload.aud : [payload.aud];
  if (payload.iss !== JWT_ISSUER || !audience.includes(JWT_AUDIENCE)) return undefined;
  if (typeof payload.exp !== "number" || payload.exp <= nowSeconds) return undefined;
  return payload;
}

/** UNAUTHENTICATED unless the call carries an admin JWT or the configured ADMIN_TOKEN. */
export function requireAdmin(requestHeader: Headers, credentials: AdminCredentials): void {
  const header = requestHeader.get("authorization") ?? "";
  const bearer = header.startsWith("Bearer ") ? header.slice("Bearer ".length) : "";
  if (bearer && credentials.ADMIN_TOKEN && bearer === credentials.ADMIN_TOKEN) return;
  if (bearer && credentials.JWKS_PATH && verifiedClaims(bearer, credentials.JWKS_PATH)?.role === "admin") return;
  throw statusError(Code.Unauthenticated, Reason.AdminTokenRequired, "admin call: needs a bearer token with role admin");
}
