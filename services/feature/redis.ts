import { once } from "node:events";
import { Cluster, Redis, type ChainableCommander, type RedisOptions } from "ioredis";
import { Code, statusError } from "../kit/index.js";
import { defineScripts } from "./lua.js";

export type RedisClient = Redis | Cluster;

export interface RedisSettings {
  REDIS_URL: string;
  REDIS_CLUSTER_NODES?: string | undefined;
  REDIS_COMMAND_TIMEOUT_MS: number;
}

/**
 * A client that fails fast instead of waiting: no offline queue (a command while
 * disconnected fails at once), one retry, and a command timeout for a Redis that
 * hangs. It reconnects in the background. Auto-pipelining sends the commands issued
 * in one tick as one write, per Cluster node, so a read of 200 entities is one round
 * trip without building pipelines by hand.
 */
export function connectRedis(settings: RedisSettings, options: { commandTimeoutMs?: number; name?: string } = {}): RedisClient {
  const redisOptions: RedisOptions = {
    commandTimeout: options.commandTimeoutMs ?? settings.REDIS_COMMAND_TIMEOUT_MS,
    maxRetriesPerRequest: 1,
    enableOfflineQueue: false,
    enableAutoPipelining: true,
    connectionName: options.name,
    retryStrategy: (attempt) => Math.min(attempt * 100, 1_000),
  };
  const client = settings.REDIS_CLUSTER_NODES
    ? new Cluster(
        settings.REDIS_CLUSTER_NODES.split(",").map((node) => {
          const [host, port] = node.split(":");
          return { host: host!, port: Number(port) };
        }),
        {
          redisOptions,
          enableOfflineQueue: false,
          enableAutoPipelining: true,
          clusterRetryStrategy: (attempt) => Math.min(attempt * 100, 1_000),
        },
      )
    : new Redis(settings.REDIS_URL, redisOptions);
  // Connection errors surface as failed commands and health; the event needs a listener.
  client.on("error", () => undefined);
  defineScripts(client);
  return client;
}

/** Resolves once the client is connected (for tools that need Redis before doing anything). */
export async function waitUntilReady(client: RedisClient, timeoutMs: number): Promise<void> {
  if (client.status === "ready") return;
  try {
    await once(client, "ready", { signal: AbortSignal.timeout(timeoutMs) });
  } catch {
    throw new Error(`Redis not reachable within ${timeoutMs} ms`);
  }
}

/** Runs a MULTI (or pipeline) and returns its replies, throwing the first command error. */
export async function execAll(chain: ChainableCommander): Promise<unknown[]> {
  const replies = await chain.exec();
  if (!replies) throw new Error("Redis transaction aborted");
  return replies.map(([err, value]) => {
    if (err) throw err;
    return value;
  });
}

/** A Redis failure as the status callers see: UNAVAILABLE with a reason, never a hang. */
export function unavailable(err: unknown) {
  const message = err instanceof Error ? err.message : String(err);
  return statusError(Code.Unavailable, "FEATURE_STORE_UNAVAILABLE", `feature store (Redis) unavailable: ${message}`);
}
