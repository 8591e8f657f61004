// The one way a service makes a Redis client: a single node (REDIS_URL) or a Redis
// Cluster (REDIS_CLUSTER_NODES, the seed nodes; credentials and TLS still come from
// REDIS_URL), with the same fail-fast behaviour either way. Code written against
// RedisClient works on both as long as every multi-key command and script keeps its
// keys in one hash slot ({tag} in the key).
import { once } from "node:events";
import { Cluster, Redis, type ClusterNode, type RedisOptions } from "ioredis";
import { z } from "zod";
import type { Logger } from "./log.js";

export type RedisClient = Redis | Cluster;

export const redisConfigShape = {
  /** The Redis to use; in cluster mode, where the credentials (user:password@) and TLS (rediss:) come from. */
  REDIS_URL: z.string().url().default("redis://127.0.0.1:6390"),
  /** "host:port,host:port": Redis Cluster through these seed nodes (any few of its nodes) instead of the node in REDIS_URL. */
  REDIS_CLUSTER_NODES: z
    .string()
    .regex(/^[^,\s]+:\d+(,[^,\s]+:\d+)*$/, "expected host:port[,host:port...]")
    .optional(),
};

export interface RedisSettings {
  REDIS_URL: string;
  REDIS_CLUSTER_NODES?: string | undefined;
}

export interface RedisClientOptions {
  /** A command that has not answered by then fails, instead of hanging (none for a subscriber). */
  commandTimeoutMs: number;
  /** CLIENT SETNAME, to tell connections apart in CLIENT LIST. */
  name?: string;
  /** Resends of a command whose connection dropped (default 1). */
  maxRetriesPerRequest?: number;
  /**
   * A pub/sub subscriber: keeps an offline queue (SUBSCRIBE waits for the connection)
   * and no command timeout (it only waits for messages).
   */
  subscriber?: boolean;
  /** Logs the first failure of an outage and the recovery (never the password). */
  log?: Logger;
  /** Lua scripts to register as commands (EVALSHA, loaded on first use), by command name. */
  scripts?: Record<string, RedisScript>;
}

export interface RedisScript {
  lua: string;
  /** Read-only: may run on a replica (EVAL_RO). */
  readOnly?: boolean;
}

const reconnectDelay = (attempt: number) => Math.min(attempt * 100, 1_000);

/** The seed nodes of REDIS_CLUSTER_NODES; undefined in single-node mode. */
export function clusterNodes(settings: RedisSettings): ClusterNode[] | undefined {
  return settings.REDIS_CLUSTER_NODES?.split(",").map((node) => {
    const colon = node.lastIndexOf(":");
    return { host: node.slice(0, colon), port: Number(node.slice(colon + 1)) };
  });
}

/** Where a client connects, for logs: never the password. */
export function describeRedis(settings: RedisSettings): string {
  if (settings.REDIS_CLUSTER_NODES) return `cluster ${settings.REDIS_CLUSTER_NODES}`;
  const url = new URL(settings.REDIS_URL);
  url.password = "";
  url.username = "";
  return url.toString();
}

/**
 * A client that fails fast instead of waiting: no offline queue (a command while
 * disconnected fails at once), one resend, and a command timeout for a Redis that
 * hangs. It reconnects in the background; in cluster mode it follows MOVED/ASK and
 * re-reads the slot map after a failover. Auto-pipelining sends the commands issued
 * in one tick as one write per node. Connection errors surface as failed commands
 * (and in the log, once per outage); they never crash the process.
 */
export function createRedis(settings: RedisSettings, options: RedisClientOptions): RedisClient {
  const subscriber = options.subscriber ?? false;
  const url = new URL(settings.REDIS_URL);
  const redisOptions: RedisOptions = {
    commandTimeout: subscriber ? undefined : options.commandTimeoutMs,
    connectTimeout: Math.max(options.commandTimeoutMs, 2_000),
    maxRetriesPerRequest: options.maxRetriesPerRequest ?? 1,
    enableOfflineQueue: subscriber,
    enableAutoPipelining: !subscriber,
    connectionName: options.name,
  };
  const nodes = clusterNodes(settings);
  const client = nodes
    ? new Cluster(nodes, {
        redisOptions: {
          ...redisOptions,
          username: url.username ? decodeURIComponent(url.username) : undefined,
          password: url.password ? decodeURIComponent(url.password) : undefined,
          tls: url.protocol === "rediss:" ? {} : undefined,
        },
        enableOfflineQueue: subscriber,
        enableAutoPipelining: !subscriber,
        // ioredis files an auto-pipelined script under the slot of its first argument, the
        // key count, so scripts for different nodes meet in one pipeline and fail it
        // (redis/ioredis#2109). Sent on their own, they go to the node of their keys.
        autoPipeliningIgnoredCommands: Object.keys(options.scripts ?? {}),
        clusterRetryStrategy: reconnectDelay,
        // A failover takes about cluster-node-timeout plus an election: re-read the slot
        // map soon after a node drops, and retry a command that met a CLUSTERDOWN or TRYAGAIN.
        retryDelayOnFailover: 200,
        retryDelayOnClusterDown: 200,
        retryDelayOnTryAgain: 200,
        slotsRefreshTimeout: Math.max(options.commandTimeoutMs, 1_000),
        slotsRefreshInterval: 2_000,
      })
    : new Redis(settings.REDIS_URL, { ...redisOptions, retryStrategy: reconnectDelay });
  for (const [name, script] of Object.entries(options.scripts ?? {})) client.defineCommand(name, script);
  let failing = false;
  client.on("error", (err: Error) => {
    if (!failing) options.log?.warn({ err: err.message, redis: describeRedis(settings), client: options.name }, "redis connection error; reconnecting");
    failing = true;
  });
  client.on("ready", () => {
    if (failing) options.log?.info({ redis: describeRedis(settings), client: options.name }, "redis reconnected");
    failing = false;
  });
  return client;
}

/** Resolves once the client is connected (a cluster: once it has the slot map); rejects after timeoutMs. */
export async function waitUntilReady(client: RedisClient, timeoutMs: number): Promise<void> {
  if (client.status === "ready") return;
  try {
    await once(client, "ready", { signal: AbortSignal.timeout(timeoutMs) });
  } catch {
    throw new Error(`Redis not reachable within ${timeoutMs} ms`);
  }
}

/**
 * createRedis, connected: rejects (and drops the client) when Redis cannot be reached
 * within readyTimeoutMs (default: the command timeout, at least 2 s). For a process
 * that must not start without Redis.
 */
export async function connectRedis(settings: RedisSettings, options: RedisClientOptions & { readyTimeoutMs?: number }): Promise<RedisClient> {
  const client = createRedis(settings, options);
  try {
    await waitUntilReady(client, options.readyTimeoutMs ?? Math.max(options.commandTimeoutMs, 2_000));
  } catch (err) {
    client.disconnect();
    throw new Error(`cannot connect to Redis at ${describeRedis(settings)}: ${(err as Error).message}`);
  }
  return client;
}

/**
 * Closes politely (QUIT, after the replies already asked for), or at once when the
 * connection is down (a refused QUIT would leave it reconnecting) or when told to: a
 * client blocked in XREAD/XREADGROUP would hold QUIT back for the whole block.
 */
export async function closeRedis(client: RedisClient, options: { immediately?: boolean } = {}): Promise<void> {
  if (options.immediately || client.status !== "ready") {
    client.disconnect();
    return;
  }
  await client.quit().catch(() => client.disconnect());
}
