// Dev tokens the edge accepts (ES256, signed with the local key from scripts/lib/pki.ts,
// which it creates when missing); `npm run token` (scripts/token.ts) mints one.
import { createPrivateKey, createPublicKey, sign, type KeyObject } from "node:crypto";
import { readFileSync } from "node:fs";
import { tiers } from "../../envoy/topology.js";
import { jwtAudience, jwtIssuer, roles, type Role } from "../../envoy/security.js";
import { ensurePki, jwkThumbprint } from "./pki.js";

export interface TokenClaims {
  user: string;
  tier: string;
  role: Role;
  ttlSeconds: number;
}

/** User ids go into a header and a rate-limit key: a conservative alphabet. */
const userPattern = /^[A-Za-z0-9._@-]{1,128}$/;

/** "90s", "15m", "1h", "7d" (or plain seconds) -> seconds. */
export function parseTtl(text: string): number {
  const match = /^(\d+)([smhd]?)$/.exec(text.trim());
  if (!match) throw new Error(`--ttl: "${text}" is not a duration like 90s, 15m, 1h or 7d`);
  const unit = { "": 1, s: 1, m: 60, h: 3600, d: 86_400 }[match[2] as "" | "s" | "m" | "h" | "d"];
  return Number(match[1]) * unit;
}

export function validateClaims(claims: TokenClaims): void {
  const known = tiers.map((t) => t.tier);
  if (!known.includes(claims.tier)) throw new Error(`--tier: "${claims.tier}" is not one of ${known.join(", ")}`);
  if (!(roles as readonly string[]).includes(claims.role)) throw new Error(`--role: "${claims.role}" is not one of ${roles.join(", ")}`);
  if (!userPattern.test(claims.user)) throw new Error(`--user: "${claims.user}" must match ${userPattern}`);
}

const base64url = (value: object) => Buffer.from(JSON.stringify(value)).toString("base64url");

/**
 * A signed JWT for the claims. `nowSeconds` lets a test mint a token that is
 * already expired; a negative ttl is allowed for the same reason.
 */
export function mintToken(claims: TokenClaims, signingKey: KeyObject, nowSeconds = Math.floor(Date.now() / 1000)): string {
  validateClaims(claims);
  const header = { alg: "ES256", typ: "JWT", kid: jwkThumbprint(createPublicKey(signingKey).export({ format: "jwk" })) };
  const payload = {
    iss: jwtIssuer,
    aud: jwtAudience,
    sub: claims.user,
    tier: claims.tier,
    role: claims.role,
    iat: nowSeconds,
    exp: nowSeconds + claims.ttlSeconds,
  };
  const input = `${base64url(header)}.${base64url(payload)}`;
  // JWS ES256 signatures are r||s (IEEE P1363), not DER.
  const signature = sign("sha256", Buffer.from(input), { key: signingKey, dsaEncoding: "ieee-p1363" });
  return `${input}.${signature.toString("base64url")}`;
}

/** The local signing key (created with the rest of the PKI when missing). */
export async function localSigningKey(): Promise<KeyObject> {
  const pki = await ensurePki();
  return createPrivateKey(readFileSync(pki.jwtKey));
}

/**
 * The authorization header of a load generator (benchmarks, chaos runs): an
 * enterprise user of its own, so the anonymous per-address limit does not cap it.
 */
export async function loadGeneratorAuth(user: string): Promise<{ authorization: string }> {
  const token = mintToken({ user, tier: "enterprise", role: "user", ttlSeconds: 6 * 3600 }, await localSigningKey());
  return { authorization: `Bearer ${token}` };
}
