// The global rate limit behind every edge: envoyproxy/ratelimit (built by setup into
// .tools/bin) with counters in Redis, so all edges share one count. This renders its
// limits from the topology's tiers and starts it on loopback ports.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { stringify } from "yaml";
import { tiers } from "../../envoy/topology.js";
import { anonymousTier, descriptorKeys, rateLimitDomain } from "../../envoy/security.js";
import { freePort, startProcess } from "./processes.js";
import { TOOLS_BIN } from "./tools.js";

export type LimitUnit = "second" | "minute" | "hour" | "day";

export interface Limit {
  requestsPerUnit: number;
  unit: LimitUnit;
}

/**
 * What the edge allows, in fixed windows (envoyproxy/ratelimit counts per window;
 * there is no burst): per user of each tier, and per client address for anonymous
 * callers, the smallest.
 */
export interface EdgeRateLimits {
  anonymousPerAddress: Limit;
  perUser: Record<string, Limit>;
}

/** Anonymous callers: below the free tier's per-user limit, per client address. */
export const anonymousPerAddressRps = 20;

export function defaultEdgeRateLimits(): EdgeRateLimits {
  return {
    anonymousPerAddress: { requestsPerUnit: anonymousPerAddressRps, unit: "second" },
    perUser: Object.fromEntries(tiers.map((t) => [t.tier, { requestsPerUnit: t.rps, unit: "second" as const }])),
  };
}

const rule = ({ requestsPerUnit, unit }: Limit) => ({ unit, requests_per_unit: requestsPerUnit });

/**
 * envoyproxy/ratelimit's config for the descriptors envoy/security.ts's
 * globalRateLimitFilter sends: (tier, user) gets a bucket per user of its tier's
 * size; (anonymous, remote_address) one per address. A key without a value matches
 * any value and counts each value apart. A signed tier this table does not know
 * gets the anonymous size, never "no limit".
 */
export function renderRateLimitConfig(limits: EdgeRateLimits = defaultEdgeRateLimits()): string {
  const perUser = (limit: Limit) => [{ key: descriptorKeys.user, rate_limit: rule(limit) }];
  return stringify({
    domain: rateLimitDomain,
    descriptors: [
      { key: descriptorKeys.tier, value: anonymousTier, descriptors: [{ key: descriptorKeys.clientAddress, rate_limit: rule(limits.anonymousPerAddress) }] },
      ...Object.entries(limits.perUser).map(([tier, limit]) => ({ key: descriptorKeys.tier, value: tier, descriptors: perUser(limit) })),
      { key: descriptorKeys.tier, descriptors: perUser(limits.anonymousPerAddress) },
    ],
  });
}

export interface RateLimitServiceOptions {
  /** redis://host:port of the Redis holding the counters (shared by every edge). */
  redisUrl: string;
  /** "host:port,..." of a Redis Cluster's nodes: counters go to the cluster instead. */
  redisClusterNodes?: string;
  /** Loopback ports; a free one each when not given. */
  grpcPort?: number;
  httpPort?: number;
  debugPort?: number;
  limits?: EdgeRateLimits;
  /** Where its config goes (RUNTIME_ROOT); a temp dir, removed at stop, when not given. */
  runtimeDir?: string;
  logLevel?: "debug" | "info" | "warn" | "error";
}

export interface RateLimitService {
  /** host:port of the gRPC RateLimitService (what Envoy's ratelimit cluster points at). */
  grpcAddress: string;
  grpcPort: number;
  /** Its HTTP port: /healthcheck and /json. */
  httpAddress: string;
  stop(): Promise<void>;
  output(): string;
}

export const rateLimitBinary = () => process.env.RATELIMIT_BIN ?? join(TOOLS_BIN, "ratelimit");

async function healthy(url: string, timeoutMs: number, exited: () => boolean, output: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (exited()) throw new Error(`ratelimit exited before it was healthy:\n${output()}`);
    const ok = await fetch(url, { signal: AbortSignal.timeout(2000) }).then((r) => r.ok, () => false);
    if (ok) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`ratelimit not healthy at ${url} after ${timeoutMs} ms:\n${output()}`);
}

export interface RateLimitCommand {
  command: string;
  env: Record<string, string>;
  grpcPort: number;
  httpPort: number;
}

/**
 * How to run envoyproxy/ratelimit (for a supervisor, or startRateLimitService):
 * bound to 127.0.0.1 only (its defaults are 0.0.0.0 and ports 8080/8081/6070, which
 * would collide with the edge), statsd off, counters in the given Redis under the
 * key prefix "ratelimit:", limits written into runtimeDir/ratelimit/config/.
 */
export async function rateLimitCommand(options: RateLimitServiceOptions & { runtimeDir: string }): Promise<RateLimitCommand> {
  const grpcPort = options.grpcPort ?? (await freePort());
  const httpPort = options.httpPort ?? (await freePort());
  const debugPort = options.debugPort ?? (await freePort());
  // It reads RUNTIME_ROOT/RUNTIME_SUBDIRECTORY/RUNTIME_APPDIRECTORY/*.yaml.
  const configDir = join(options.runtimeDir, "ratelimit", "config");
  mkdirSync(configDir, { recursive: true });
  writeFileSync(join(configDir, `${rateLimitDomain}.yaml`), renderRateLimitConfig(options.limits));
  const env: Record<string, string> = {
    HOST: "127.0.0.1",
    PORT: String(httpPort),
    GRPC_HOST: "127.0.0.1",
    GRPC_PORT: String(grpcPort),
    DEBUG_HOST: "127.0.0.1",
    DEBUG_PORT: String(debugPort),
    USE_STATSD: "false",
    LOG_LEVEL: options.logLevel ?? "warn",
    LOG_FORMAT: "json",
    BACKEND_TYPE: "redis",
    REDIS_SOCKET_TYPE: "tcp",
    ...(options.redisClusterNodes ? { REDIS_TYPE: "CLUSTER", REDIS_URL: options.redisClusterNodes, REDIS_PIPELINE_WINDOW: "150us" } : { REDIS_TYPE: "SINGLE", REDIS_URL: new URL(options.redisUrl).host }),
    CACHE_KEY_PREFIX: "ratelimit:",
    RUNTIME_ROOT: options.runtimeDir,
    RUNTIME_SUBDIRECTORY: "ratelimit",
    RUNTIME_APPDIRECTORY: "config",
    RUNTIME_WATCH_ROOT: "false",
  };
  return { command: rateLimitBinary(), env, grpcPort, httpPort };
}

/** Starts envoyproxy/ratelimit (see rateLimitCommand); resolves once /healthcheck answers, which it does after loading the config. */
export async function startRateLimitService(options: RateLimitServiceOptions): Promise<RateLimitService> {
  const ownDir = options.runtimeDir === undefined;
  const runtimeDir = options.runtimeDir ?? mkdtempSync(join(tmpdir(), "recsys-ratelimit-"));
  const { command, env, grpcPort, httpPort } = await rateLimitCommand({ ...options, runtimeDir });
  const proc = await startProcess(command, [], { env });
  const httpAddress = `127.0.0.1:${httpPort}`;
  try {
    await healthy(`http://${httpAddress}/healthcheck`, 30_000, () => proc.child.exitCode !== null, proc.output);
  } catch (err) {
    await proc.stop("SIGKILL");
    throw err;
  }
  return {
    grpcAddress: `127.0.0.1:${grpcPort}`,
    grpcPort,
    httpAddress,
    output: proc.output,
    stop: async () => {
      await proc.stop();
      if (ownDir) rmSync(runtimeDir, { recursive: true, force: true });
    },
  };
}
