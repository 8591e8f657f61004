// The Redis a service test runs against: one redis-server (startRedis), or, when
// RECSYS_TEST_REDIS=cluster (the "cluster" vitest project), a 6-node Redis Cluster on
// free loopback ports: 3 masters, a replica each, cluster-node-timeout 1000 ms. Tests
// use one interface for both, so the same test file proves the service on each.
import { once } from "node:events";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Cluster, Redis } from "ioredis";
import { startRedisCluster, waitClusterHealthy, type RunningCluster } from "../../scripts/lib/redis-cluster.js";
import type { RedisClient } from "../../services/kit/redis.js";
import { startRedis, type TestRedis } from "./redis.js";

export const CLUSTER_MODE = process.env.RECSYS_TEST_REDIS === "cluster";

export interface TestRedisTarget {
  /** What a service reads: REDIS_URL, plus REDIS_CLUSTER_NODES in cluster mode. */
  env: { REDIS_URL: string; REDIS_CLUSTER_NODES?: string };
  /** A plain client for the test's own probes (cluster-aware in cluster mode); the caller disconnects it. */
  client(): RedisClient;
  /** Every key matching a glob pattern, over every master. */
  keys(pattern: string): Promise<string[]>;
  /** Kills every Redis process at once (SIGKILL), keeping the data for restart(). */
  kill(): Promise<void>;
  /** Starts Redis again on the same ports after kill(); a cluster rejoins with its data. */
  restart(): Promise<void>;
  /** Stops Redis and removes its data. */
  stop(): Promise<void>;
}

export interface TestCluster extends TestRedisTarget {
  cluster: RunningCluster;
  /** The port of the master serving a key's slot. */
  masterOf(key: string): Promise<number>;
}

/** count distinct free loopback ports: all held open at once, so none is handed out twice. */
async function freePorts(count: number): Promise<number[]> {
  const servers = Array.from({ length: count }, () => createServer().listen(0, "127.0.0.1"));
  await Promise.all(servers.map((server) => once(server, "listening")));
  const ports = servers.map((server) => (server.address() as AddressInfo).port);
  await Promise.all(servers.map((server) => new Promise((resolve) => server.close(resolve))));
  return ports;
}

async function startOnFreePorts(dir: string, nodes: number, nodeTimeoutMs: number) {
  // Another process can take a port between our check and redis-server's bind: try again on others.
  for (let attempt = 1; ; attempt++) {
    const ports = await freePorts(2 * nodes);
    const specs = Array.from({ length: nodes }, (_, i) => ({ port: ports[2 * i]!, busPort: ports[2 * i + 1]!, dir: join(dir, `try-${attempt}`, `node-${i}`) }));
    try {
      return { specs, cluster: await startRedisCluster(specs, { nodeTimeoutMs, replicas: 1 }) };
    } catch (err) {
      if (attempt === 3 || !/Address already in use/.test(String(err))) throw err;
    }
  }
}

export async function startTestCluster(options: { nodes?: number; nodeTimeoutMs?: number } = {}): Promise<TestCluster> {
  const dir = mkdtempSync(join(tmpdir(), "recsys-redis-cluster-"));
  const { specs, cluster } = await startOnFreePorts(dir, options.nodes ?? 6, options.nodeTimeoutMs ?? 1_000).catch((err: unknown) => {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  });
  const seeds = specs.map((s) => ({ host: "127.0.0.1", port: s.port }));
  const client = () => {
    const c = new Cluster(seeds, { clusterRetryStrategy: () => 200, retryDelayOnFailover: 200, retryDelayOnClusterDown: 200 });
    c.on("error", () => undefined);
    return c;
  };
  return {
    cluster,
    env: { REDIS_URL: `redis://127.0.0.1:${specs[0]!.port}`, REDIS_CLUSTER_NODES: cluster.seeds },
    client,
    keys: async (pattern) => {
      const probe = client();
      try {
        await probe.cluster("INFO");
        const perMaster = await Promise.all(probe.nodes("master").map((node) => node.keys(pattern)));
        return perMaster.flat();
      } finally {
        probe.disconnect();
      }
    },
    masterOf: async (key) => {
      const probe = new Redis(specs[0]!.port, "127.0.0.1");
      try {
        const slot = Number(await probe.cluster("KEYSLOT", key));
        const range = (await probe.cluster("SLOTS")).find(([from, to]) => slot >= from && slot <= to);
        if (!range?.[2]) throw new Error(`slot ${slot} has no master`);
        return range[2][1];
      } finally {
        probe.disconnect();
      }
    },
    kill: () => cluster.stop(true),
    restart: async () => {
      for (const spec of specs) await cluster.restart(spec.port);
      await waitClusterHealthy(specs.map((s) => s.port), 30_000);
    },
    stop: async () => {
      await cluster.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** The test's Redis: a single redis-server, or a 6-node cluster when RECSYS_TEST_REDIS=cluster. */
export async function startTestRedis(): Promise<TestRedisTarget> {
  if (CLUSTER_MODE) return startTestCluster();
  let redis: TestRedis = await startRedis();
  return {
    env: { REDIS_URL: redis.url },
    client: () => new Redis(redis.url),
    keys: async (pattern) => {
      const probe = new Redis(redis.url);
      try {
        return await probe.keys(pattern);
      } finally {
        probe.disconnect();
      }
    },
    kill: () => redis.stop(true),
    restart: async () => {
      redis = await startRedis(redis.port);
    },
    stop: () => redis.stop(),
  };
}
