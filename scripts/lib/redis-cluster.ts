// A Redis Cluster on loopback, for tests and `npm start -- --redis-cluster`: N
// redis-server processes with cluster-enabled yes, joined by `redis-cli --cluster
// create` into masters with replicas. Each node keeps nodes.conf and its append-only
// file in its own directory, so a node (or all of them) restarted on the same port
// rejoins with its data and its role.
import { existsSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { Redis } from "ioredis";
import { runCommand, startProcess, type Started } from "./processes.js";
import { tool } from "./tools.js";

export interface ClusterNodeSpec {
  port: number;
  /** Cluster bus port (default port + 10000). */
  busPort?: number;
  /** Holds nodes.conf and the append-only file. */
  dir: string;
}

export interface ClusterOptions {
  /** A node not answering for this long is failed over (default 1000 ms: a failover in about 2-3 s). */
  nodeTimeoutMs?: number;
  /** Replicas per master (default 1: 6 nodes make 3 masters with a replica each). */
  replicas?: number;
}

/** redis-server's arguments for one cluster node on 127.0.0.1. */
export function clusterNodeArgs(node: ClusterNodeSpec, options: ClusterOptions = {}): string[] {
  return [
    "--port", String(node.port),
    "--cluster-port", String(node.busPort ?? node.port + 10_000),
    "--bind", "127.0.0.1",
    "--protected-mode", "no",
    "--dir", node.dir,
    "--cluster-enabled", "yes",
    "--cluster-config-file", "nodes.conf",
    "--cluster-node-timeout", String(options.nodeTimeoutMs ?? 1_000),
    "--appendonly", "yes",
    "--save", "",
  ];
}

/** redis-cli from the same install as redis-server (Debian ships both), else from PATH. */
function redisCli(): string {
  const beside = join(dirname(tool("redis-server")), "redis-cli");
  return existsSync(beside) ? beside : "redis-cli";
}

async function clusterInfo(port: number): Promise<Record<string, string>> {
  const redis = new Redis(port, "127.0.0.1", { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, connectTimeout: 1_000, commandTimeout: 1_000 });
  redis.on("error", () => undefined);
  try {
    await redis.connect();
    const [cluster, replication] = await Promise.all([redis.cluster("INFO"), redis.info("replication")]);
    return Object.fromEntries(
      `${cluster}\n${replication}`
        .split(/\r?\n/)
        .filter((line) => line.includes(":"))
        .map((line) => [line.slice(0, line.indexOf(":")), line.slice(line.indexOf(":") + 1)]),
    );
  } finally {
    redis.disconnect();
  }
}

/**
 * Resolves once every node says cluster_state:ok with all 16384 slots assigned and
 * every replica's link to its master is up (so a master killed next has a synced
 * replica to fail over to).
 */
export async function waitClusterHealthy(ports: readonly number[], timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = "";
  for (;;) {
    try {
      const infos = await Promise.all(ports.map(clusterInfo));
      const unhealthy = infos.findIndex(
        (info) => info.cluster_state !== "ok" || info.cluster_slots_assigned !== "16384" || (info.role === "slave" && info.master_link_status !== "up"),
      );
      if (unhealthy < 0) return;
      last = `127.0.0.1:${ports[unhealthy]}: ${JSON.stringify(infos[unhealthy])}`;
    } catch (err) {
      last = (err as Error).message;
    }
    if (Date.now() > deadline) throw new Error(`Redis Cluster not healthy after ${timeoutMs} ms: ${last}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * Joins running, empty cluster nodes into one cluster (the first ports become
 * masters), unless they already form one (nodes restarted from their nodes.conf).
 * Then waits until it is healthy.
 */
export async function formCluster(ports: readonly number[], options: ClusterOptions = {}, timeoutMs = 30_000): Promise<void> {
  const first = await clusterInfo(ports[0]!);
  if (first.cluster_known_nodes !== String(ports.length)) {
    const { code, stdout, stderr } = await runCommand(
      redisCli(),
      ["--cluster", "create", ...ports.map((p) => `127.0.0.1:${p}`), "--cluster-replicas", String(options.replicas ?? 1), "--cluster-yes"],
      timeoutMs,
    );
    if (code !== 0) throw new Error(`redis-cli --cluster create failed (exit ${code}):\n${stdout}${stderr}`);
  }
  await waitClusterHealthy(ports, timeoutMs);
}

export interface RunningCluster {
  nodes: (ClusterNodeSpec & { process: Started })[];
  /** "127.0.0.1:port,..." for REDIS_CLUSTER_NODES. */
  seeds: string;
  /** Starts a stopped node again on its port, from its directory. */
  restart(port: number): Promise<void>;
  /** Stops every node (SIGKILL when crash is true). */
  stop(crash?: boolean): Promise<void>;
}

/** Starts and forms a cluster of unsupervised nodes (tests; `npm start` supervises each node itself). */
export async function startRedisCluster(specs: readonly ClusterNodeSpec[], options: ClusterOptions = {}): Promise<RunningCluster> {
  const launch = (spec: ClusterNodeSpec) => {
    mkdirSync(spec.dir, { recursive: true });
    return startProcess(tool("redis-server"), clusterNodeArgs(spec, options), { waitFor: /Ready to accept connections/ });
  };
  const nodes: RunningCluster["nodes"] = [];
  // A master's SIGTERM waits for its replicas (shutdown-timeout 10 s), which are stopping
  // too; on a starved machine it has been seen to hang past two minutes: SIGKILL then.
  const stop = async (crash = false) => {
    await Promise.all(nodes.map((node) => node.process.stop(crash ? "SIGKILL" : "SIGTERM", 15_000)));
  };
  try {
    await Promise.all(specs.map(async (spec) => nodes.push({ ...spec, process: await launch(spec) })));
    await formCluster(specs.map((s) => s.port), options);
  } catch (err) {
    await stop(true);
    throw err;
  }
  return {
    nodes,
    seeds: specs.map((s) => `127.0.0.1:${s.port}`).join(","),
    restart: async (port) => {
      const node = nodes.find((n) => n.port === port);
      if (!node) throw new Error(`no cluster node on port ${port}`);
      await node.process.stop("SIGKILL");
      node.process = await launch(node);
    },
    stop,
  };
}
