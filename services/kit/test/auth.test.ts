import { generateKeyPairSync } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { jwkThumbprint } from "../../../scripts/lib/pki.js";
import { mintToken } from "../../../scripts/lib/token.js";
import { Code, ConnectError, requireAdmin } from "../index.js";

function keyPair() {
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const jwk = publicKey.export({ format: "jwk" });
  return { privateKey, jwk: { ...jwk, kid: jwkThumbprint(jwk), alg: "ES256", use: "sig" } };
}

const signer = keyPair();
const stranger = keyPair();
const jwksPath = join(mkdtempSync(join(tmpdir(), "auth-")), "jwks.json");
writeFileSync(jwksPath, JSON.stringify({ keys: [signer.jwk] }));

const bearer = (token: string) => new Headers({ authorization: `Bearer ${token}` });
const outcome = (headers: Headers, credentials: Parameters<typeof requireAdmin>[1]) => {
  try {
    requireAdmin(headers, credentials);
    return "allowed";
  } catch (err) {
    expect((err as ConnectError).code).toBe(Code.Unauthenticated);
    return "refused";
  }
};
const token = (role: "user" | "service" | "admin", ttlSeconds = 600, key = signer.privateKey) => mintToken({ user: "ops", tier: "enterprise", role, ttlSeconds }, key);

describe("requireAdmin", () => {
  it("accepts an unexpired admin JWT signed by a key in the JWKS", () => {
    expect(outcome(bearer(token("admin")), { JWKS_PATH: jwksPath })).toBe("allowed");
  });

  it("refuses other roles, expired tokens, foreign keys and tampered payloads", () => {
    expect(outcome(bearer(token("user")), { JWKS_PATH: jwksPath })).toBe("refused");
    expect(outcome(bearer(token("service")), { JWKS_PATH: jwksPath })).toBe("refused");
    expect(outcome(bearer(token("admin", -1)), { JWKS_PATH: jwksPath })).toBe("refused");
    expect(outcome(bearer(token("admin", 600, stranger.privateKey)), { JWKS_PATH: jwksPath })).toBe("refused");
    const [header, payload, signature] = token("user").split(".");
    const promoted = Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(payload!, "base64url").toString()), role: "admin" })).toString("base64url");
    expect(outcome(bearer(`${header}.${promoted}.${signature}`), { JWKS_PATH: jwksPath })).toBe("refused");
    expect(outcome(bearer("not-a-jwt"), { JWKS_PATH: jwksPath })).toBe("refused");
  });

  it("accepts the static token only where one is configured, and nothing when nothing is", () => {
    expect(outcome(bearer("operator-secret-1"), { ADMIN_TOKEN: "operator-secret-1" })).toBe("allowed");
    expect(outcome(bearer("operator-secret-2"), { ADMIN_TOKEN: "operator-secret-1" })).toBe("refused");
    expect(outcome(new Headers(), { ADMIN_TOKEN: "operator-secret-1", JWKS_PATH: jwksPath })).toBe("refused");
    expect(outcome(bearer(token("admin")), {})).toBe("refused");
    expect(outcome(bearer("dev-admin-token"), {})).toBe("refused");
  });
});
