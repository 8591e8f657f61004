// Mints a dev token the edge accepts (scripts/lib/token.ts):
//   npm run token -- --tier premium --user u1 [--role user|service|admin] [--ttl 1h]
import { parseArgs } from "node:util";
import { pathToFileURL } from "node:url";
import { localSigningKey, mintToken, parseTtl, validateClaims } from "./lib/token.js";
import type { Role } from "../envoy/security.js";

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const { values } = parseArgs({
    options: {
      tier: { type: "string", default: "free" },
      user: { type: "string" },
      role: { type: "string", default: "user" },
      ttl: { type: "string", default: "1h" },
    },
  });
  try {
    if (!values.user) throw new Error("--user is required (the token's subject: its own rate-limit bucket)");
    const claims = { user: values.user, tier: values.tier, role: values.role as Role, ttlSeconds: parseTtl(values.ttl) };
    validateClaims(claims);
    console.log(mintToken(claims, await localSigningKey()));
  } catch (err) {
    console.error((err as Error).message);
    process.exit(2);
  }
}
