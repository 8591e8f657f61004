import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const TOOLS_BIN = join(ROOT, ".tools", "bin");

const envOverride: Record<string, string> = {
  envoy: "ENVOY_BIN",
  "redis-server": "REDIS_SERVER_BIN",
};

/**
 * Path of a tool installed by `npm run setup`: an env override (ENVOY_BIN,
 * REDIS_SERVER_BIN), then .tools/bin, then the bare name for PATH lookup.
 */
export function tool(name: "envoy" | "ghz" | "grpcurl" | "grpc-health-probe" | "redis-server" | "buf"): string {
  const override = envOverride[name];
  if (override && process.env[override]) return process.env[override]!;
  if (name === "buf") return join(ROOT, "node_modules", ".bin", "buf");
  const local = join(TOOLS_BIN, name);
  return existsSync(local) ? local : name;
}
