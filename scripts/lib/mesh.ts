// Brings the mesh up on one machine without Docker: Redis (unless REDIS_URL is
// given), every service instance from envoy/topology.ts with its Envoy sidecar, and
// the edge Envoy. Used by `npm start`, the mesh tests and the end-to-end benchmark.
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { spawn, type ChildProcess } from "node:child_process";
import { join, relative } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Health, HealthCheckResponse_ServingStatus } from "../../gen/grpc/health/v1/health_pb.js";
import { instances, localListeners, localPorts, localRedisPort, observePorts, upstreamEnv } from "../../envoy/topology.js";
import { describeExit, indent, logCause, portHolder, portTaken, Supervised, type RestartPolicy } from "./processes.js";
import { compiledServices } from "./build.js";
import { ensurePki } from "./pki.js";
import { rateLimitCommand } from "./ratelimit.js";
import { clusterNodeArgs, formCluster } from "./redis-cluster.js";
import { ROOT, tool } from "./tools.js";

export interface MeshOptions {
  /** Only these services (default: every service whose server exists). */
  only?: string[];
  /** Use this Redis instead of starting one. */
  redisUrl?: string;
  /** Port for the Redis the mesh starts. */
  redisPort?: number;
  /**
   * Start a 6-node Redis Cluster on loopback (3 masters, a replica each) instead of one
   * Redis, and run every service and the rate limit service on it (`npm start -- --redis-cluster`).
   */
  redisCluster?: boolean;
  /** Extra env for every app (LOG_LEVEL, DRAIN_MS, ...). */
  env?: Record<string, string>;
  /** Extra env per instance id ("prediction-v2"). */
  instanceEnv?: Record<string, Record<string, string>>;
  /** Extra node flags per instance id, e.g. ["--cpu-prof"] for profiling. */
  instanceNodeArgs?: Record<string, string[]>;
  /** Logs, Redis's append-only files and the replayed batch data go here (default $RECSYS_RUN_DIR, else .run/). */
  runDir?: string;
  /** How long to wait for every instance to report SERVING. */
  readyTimeoutMs?: number;
  /** Aborting it stops a start-up in progress and everything it started. */
  signal?: AbortSignal;
  /** Restart lines from the supervisor (default: stderr). */
  log?: (line: string) => void;
  restartPolicy?: RestartPolicy;
}

export interface RunningInstance {
  id: string;
  service: string;
  version: string;
  appPort: number;
  ingressPort: number;
  sidecarAdminPort: number;
  metricsPort: number;
  /** The app's current process (a new one after each restart). */
  readonly app: ChildProcess;
  readonly sidecar: ChildProcess;
}

export interface Mesh {
  redisUrl: string;
  /** The cluster's nodes ("127.0.0.1:6391,..."), when the mesh runs on a Redis Cluster. */
  redisClusterNodes?: string;
  edge: string;
  edgeAdmin: string;
  instances: RunningInstance[];
  logDir: string;
  /** The Redis the mesh started (undefined with REDIS_URL). */
  readonly redis: ChildProcess | undefined;
  readonly edgeProcess: ChildProcess;
  /** Stops one instance's app on purpose, leaving its sidecar up; it stays down until restartApp. */
  killApp(id: string, signal?: NodeJS.Signals): Promise<void>;
  /** Starts a stopped instance's app again and waits until it is SERVING. */
  restartApp(id: string): Promise<void>;
  /** How many times the supervisor restarted each process ("feature", "envoy-feature", "redis", "envoy-edge"). */
  restarts(): Record<string, number>;
  stop(): Promise<void>;
}

const serverEntry = (name: string) => join(ROOT, "services", name, "server.ts");

export function availableServices(): string[] {
  return [...new Set(instances.map((i) => i.service.name))].filter((name) => existsSync(serverEntry(name)));
}

/**
 * Claims a run dir for this process (runDir/mesh.pid), or throws naming the live mesh
 * that holds it; a claim left by a dead process is taken over. Returns the release.
 */
function claimRunDir(runDir: string): () => void {
  const file = join(runDir, "mesh.pid");
  for (;;) {
    try {
      writeFileSync(file, String(process.pid), { flag: "wx" });
      return () => rmSync(file, { force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      const holder = Number(readFileSync(file, "utf8"));
      if (holder && holder !== process.pid && alive(holder)) {
        throw new Error(`another mesh (pid ${holder}) is running from ${runDir}: stop it, or give this one its own directory (RECSYS_RUN_DIR=<dir>)`);
      }
      rmSync(file, { force: true });
    }
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Every port the mesh would listen on that something else holds now, named with its holder where `ss` can tell. */
export async function takenPorts(listeners: { port: number; what: string }[]): Promise<string[]> {
  const taken: string[] = [];
  for (const { port, what } of listeners) {
    if (!(await portTaken(port))) continue;
    const holder = await portHolder(port);
    taken.push(`127.0.0.1:${port} (${what}) is taken${holder ? ` by ${holder}` : ""}`);
  }
  return taken;
}

export async function waitServing(address: string, service: string, timeoutMs: number): Promise<void> {
  const client = createClient(Health, createGrpcTransport({ baseUrl: `http://${address}` }));
  const deadline = Date.now() + timeoutMs;
  let last = "";
  while (Date.now() < deadline) {
    try {
      const res = await client.check({ service }, { timeoutMs: 1000 });
      if (res.status === HealthCheckResponse_ServingStatus.SERVING) return;
      last = HealthCheckResponse_ServingStatus[res.status];
    } catch (err) {
      last = String(err);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`${service || "gRPC health"} at ${address} not SERVING after ${timeoutMs} ms (last: ${last})`);
}

/** Waits until an Envoy's admin /ready says LIVE (listeners bound, clusters initialised). */
export async function waitEnvoyReady(adminUrl: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = "";
  while (Date.now() < deadline) {
    last = await fetch(`${adminUrl}/ready`, { signal: AbortSignal.timeout(1000) }).then((r) => `${r.status} ${r.statusText}`, (err: Error) => err.message);
    if (last.startsWith("200")) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`Envoy at ${adminUrl} not ready after ${timeoutMs} ms (last: ${last})`);
}

/** Waits until the edge's active health checks see every running instance healthy. */
export async function waitEdgeHealthy(adminUrl: string, running: RunningInstance[], timeoutMs: number): Promise<void> {
  const clusterOf = (i: RunningInstance) => (i.service === "prediction" ? `prediction-${i.version}` : i.service);
  const deadline = Date.now() + timeoutMs;
  let missing: string[] = [];
  while (Date.now() < deadline) {
    const text = await fetch(`${adminUrl}/clusters`).then((r) => r.text(), () => "");
    missing = running
      .filter((i) => !text.includes(`${clusterOf(i)}::127.0.0.1:${i.ingressPort}::health_flags::healthy`))
      .map((i) => i.id);
    if (missing.length === 0) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`edge does not see ${missing.join(", ")} healthy after ${timeoutMs} ms`);
}

/**
 * The committed batch features are a snapshot from the training data's time range;
 * their TTLs would have expired them long ago. npm start replays the snapshot as of
 * now: every event_time shifted by the same amount, so the newest row is fresh.
 */
function rebasedCopy(file: string, outDir: string): string {
  const lines = readFileSync(file, "utf8").split("\n").filter(Boolean);
  const rows = lines.map((line) => JSON.parse(line) as { event_time: string });
  const newest = Math.max(...rows.map((r) => Date.parse(r.event_time)));
  const shift = Date.now() - newest;
  const out = join(outDir, file.split("/").pop()!);
  writeFileSync(out, rows.map((r) => JSON.stringify({ ...r, event_time: new Date(Date.parse(r.event_time) + shift).toISOString() })).join("\n") + "\n");
  return out;
}

/** Loads the batch features and the catalogue's popular lists into Redis. */
async function materialize(build: string, redisUrl: string, redisEnv: Record<string, string>, runDir: string, logDir: string): Promise<void> {
  const dataDir = join(runDir, "data");
  mkdirSync(dataDir, { recursive: true });
  const features = join(ROOT, "models", "features", "v1");
  const jobs: [string, string[]][] = [
    [rebasedCopy(join(features, "user_features.jsonl"), dataDir), ["--view", "user_profile"]],
    [rebasedCopy(join(features, "item_features.jsonl"), dataDir), ["--view", "item_profile"]],
    [join(ROOT, "models", "catalog", "v1", "items.jsonl"), ["--view", "catalog"]],
  ];
  const logFile = join(logDir, "materialize.log");
  for (const [file, extra] of jobs) {
    const from = existsSync(logFile) ? statSync(logFile).size : 0;
    const log = openSync(logFile, "a");
    const child = spawn("node", ["--enable-source-maps", join(build, "services", "feature", "materialize.js"), file, "--redis-url", redisUrl, "--restart", ...extra], { cwd: ROOT, stdio: ["ignore", log, log], env: { ...process.env, ...redisEnv } });
    closeSync(log);
    const code = await new Promise<number | null>((resolve) => child.on("exit", resolve));
    if (code !== 0) throw new Error(`materializing ${relative(ROOT, file)} failed (exit ${code}); its log (${logFile}) says:\n${indent(logCause(logFile, from))}`);
  }
}

export async function waitRedis(url: string, timeoutMs: number): Promise<void> {
  const { Redis } = await import("ioredis");
  const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  // A refused connection is the answer this loop waits out, not news.
  redis.on("error", () => undefined);
  const deadline = Date.now() + timeoutMs;
  try {
    while (Date.now() < deadline) {
      try {
        if (redis.status !== "ready") await redis.connect();
        await redis.ping();
        return;
      } catch {
        redis.disconnect();
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    throw new Error(`Redis at ${url} not answering after ${timeoutMs} ms`);
  } finally {
    redis.disconnect();
  }
}

/**
 * A few Predict calls per prediction version through the edge before the mesh is
 * declared up: the first calls on a cold mesh open connections through every sidecar
 * and JIT-compile the hot paths, and would otherwise land on a fallback rung.
 */
async function warmUp(mesh: Mesh): Promise<void> {
  const versions = mesh.instances.filter((i) => i.service === "prediction").map((i) => i.version);
  if (versions.length === 0) return;
  const { PredictionService } = await import("../../gen/recsys/prediction/v1/prediction_pb.js");
  const client = createClient(PredictionService, createGrpcTransport({ baseUrl: `http://${mesh.edge}` }));
  for (const version of versions) {
    for (let i = 0; i < 10; i++) {
      const userId = `warmup-${i}`;
      await client.predict({ userId, numPredictions: 10, bypassCache: true }, { headers: { "x-canary": version }, timeoutMs: 5000 }).catch(() => undefined);
    }
  }
}


/** Rejects when the signal aborts. */
const aborted = (signal: AbortSignal | undefined) =>
  new Promise<never>((_, reject) => {
    if (!signal) return;
    if (signal.aborted) reject(new Error("start-up interrupted"));
    signal.addEventListener("abort", () => reject(new Error("start-up interrupted")), { once: true });
  });

export async function startMesh(options: MeshOptions = {}): Promise<Mesh> {
  const runDir = options.runDir ?? process.env.RECSYS_RUN_DIR ?? join(ROOT, ".run");
  const logDir = join(runDir, "logs");
  mkdirSync(logDir, { recursive: true });
  const log = options.log ?? ((line: string) => console.error(`[mesh ${new Date().toISOString()}] ${line}`));
  const wanted = new Set(options.only ?? availableServices());
  const startRedis = !(options.redisUrl ?? process.env.REDIS_URL);
  const redisPort = options.redisPort ?? Number(process.env.REDIS_PORT ?? localRedisPort);
  const clusterPorts = Array.from({ length: 6 }, (_, i) => redisPort + 1 + i);

  // Every port first, before anything starts: a taken one fails here, by name, with
  // nothing half-started to clean up.
  const ids = instances.filter((i) => wanted.has(i.service.name)).map((i) => i.id);
  const listeners = localListeners()
    .filter(({ what }) => what === "edge" || what === "edge admin" || ids.some((id) => what.startsWith(`${id} `)))
    .concat(!startRedis ? [] : options.redisCluster ? clusterPorts.flatMap((port) => [{ port, what: `redis cluster node ${port}` }, { port: port + 10_000, what: `redis cluster bus ${port}` }]) : [{ port: redisPort, what: "redis" }]);
  const taken = await takenPorts([...new Map(listeners.map((l) => [l.port, l])).values()]);
  if (taken.length > 0) {
    throw new Error(`the mesh cannot start: ${taken.length === 1 ? "a port it needs is" : "ports it needs are"} in use:\n${taken.map((t) => `  ${t}`).join("\n")}\nStop what holds ${taken.length === 1 ? "it" : "them"} (another \`npm start\`?), or run inside a private network namespace: node scripts/in-netns.mjs <command>.`);
  }

  // The apps run compiled JavaScript (scripts/build.ts): a restart after a crash waits
  // for Node to load modules, not for tsx to transpile them.
  const build = await compiledServices();
  // One mesh per run dir: two Redis servers appending to one AOF corrupt it.
  const releaseRunDir = claimRunDir(runDir);
  const processes = new Map<string, Supervised>();
  let failStart: (err: Error) => void = () => undefined;
  const startFailed = new Promise<never>((_, reject) => (failStart = reject));
  startFailed.catch(() => undefined);
  const launch = (id: string, name: string, command: string, args: string[], env: Record<string, string> = {}) => {
    const supervised = new Supervised({ name, command, args, env, logFile: join(logDir, `${id}.log`), log, policy: options.restartPolicy });
    supervised.onExit((exit) => failStart(new Error(`${name} exited during start-up (${describeExit(exit)}); its log (${supervised.spec.logFile}) says:\n${indent(supervised.cause())}`)));
    processes.set(id, supervised.start());
    return supervised;
  };
  // A crash of this process must not leave the mesh running without its supervisor.
  const killAll = () => {
    for (const p of processes.values()) if (p.running) p.child.kill("SIGKILL");
  };
  process.on("exit", killAll);

  let redis: Supervised | undefined;
  let redisUrl = options.redisUrl ?? process.env.REDIS_URL;
  let redisClusterNodes: string | undefined;
  if (!redisUrl && options.redisCluster) {
    for (const port of clusterPorts) {
      const dir = join(runDir, "redis-cluster", String(port));
      mkdirSync(dir, { recursive: true });
      launch(`redis-${port}`, `redis cluster node ${port}`, tool("redis-server"), clusterNodeArgs({ port, dir }));
    }
    await Promise.all(clusterPorts.map((port) => waitRedis(`redis://127.0.0.1:${port}`, 15_000)));
    // Nodes restarted from their nodes.conf (a second `npm start` on the same run dir) rejoin as they were.
    await formCluster(clusterPorts);
    redisClusterNodes = clusterPorts.map((port) => `127.0.0.1:${port}`).join(",");
    redisUrl = `redis://127.0.0.1:${clusterPorts[0]}`;
  } else if (!redisUrl) {
    const dir = join(runDir, "redis");
    mkdirSync(dir, { recursive: true });
    // appendonly: a restarted Redis comes back with its data (up to the last second).
    redis = launch("redis", "redis", tool("redis-server"), ["--port", String(redisPort), "--bind", "127.0.0.1", "--dir", dir, "--appendonly", "yes", "--save", ""]);
    redisUrl = `redis://127.0.0.1:${redisPort}`;
  }

  // The Envoys' certificates and the edge's JWT key (.run/pki, where the rendered configs look).
  const pki = await ensurePki();
  // The rendered local Envoy configs write their access logs under .run/logs of the
  // checkout (a relative path, whatever the run dir), and Envoy refuses a missing one.
  mkdirSync(join(ROOT, ".run", "logs"), { recursive: true });
  // The edge's global rate limit (envoyproxy/ratelimit) keeps its counters in Redis.
  await waitRedis(redisUrl, 15_000);
  const rateLimit = await rateLimitCommand({
    redisUrl,
    redisClusterNodes,
    grpcPort: localPorts.rateLimitGrpc,
    httpPort: localPorts.rateLimitHttp,
    debugPort: localPorts.rateLimitDebug,
    runtimeDir: join(runDir, "ratelimit"),
  });
  launch("ratelimit", "rate-limit service", rateLimit.command, [], rateLimit.env);
  // Envoy worker threads (default: one per core); SIDECAR_THREADS / EDGE_THREADS tune it.
  const threads = (value: string | undefined) => (value ? ["--concurrency", value] : []);
  // Data loads while the services start; readiness waits for both.
  const url = redisUrl;
  const redisEnv: Record<string, string> = redisClusterNodes ? { REDIS_CLUSTER_NODES: redisClusterNodes } : {};
  // On a cluster: feature's event partitions spread over the 3 masters, an accepted event
  // is on a replica before it is acknowledged, and retrieval's replicas share their writes.
  const clusterServiceEnv: Record<string, Record<string, string>> = redisClusterNodes ? { feature: { PARTITIONS: "6", INGEST_REPLICA_ACKS: "1" }, retrieval: { REPLICATE_INDEX_OPS: "true" } } : {};
  const dataReady = wanted.has("feature") ? waitRedis(url, 15_000).then(() => materialize(build, url, { ...redisEnv, ...clusterServiceEnv.feature }, runDir, logDir)) : Promise.resolve();
  dataReady.catch(() => undefined);
  const running: RunningInstance[] = [];
  const apps = new Map<string, Supervised>();
  for (const { service: spec, version, id } of instances) {
    if (!wanted.has(spec.name)) continue;
    const ports = {
      appPort: localPorts.app(spec.name, version),
      ingressPort: localPorts.ingress(spec.name, version),
      sidecarAdminPort: localPorts.sidecarAdmin(spec.name, version),
      metricsPort: localPorts.appMetrics(spec.name, version),
    };
    const env = {
      GRPC_PORT: String(ports.appPort),
      METRICS_PORT: String(ports.metricsPort),
      ...(spec.connect ? { CONNECT_PORT: String(localPorts.appConnect(spec.name, version)) } : {}),
      SERVICE_VERSION: version,
      REDIS_URL: redisUrl,
      ...redisEnv,
      ...clusterServiceEnv[spec.name],
      // Admin RPCs accept the edge's admin JWTs (npm run token -- --role admin).
      JWKS_PATH: pki.jwks,
      // Spans go to `npm run observe`'s Zipkin. The apps follow Envoy's sampling decision,
      // 0% until observe raises it, so without it they send nothing.
      OTEL_EXPORTER_ZIPKIN_ENDPOINT: `http://127.0.0.1:${observePorts.zipkin}/api/v2/spans`,
      ...upstreamEnv(localPorts, spec, version),
      ...options.env,
      ...options.instanceEnv?.[id],
    };
    const app = launch(id, `${id} app`, "node", ["--enable-source-maps", ...(options.instanceNodeArgs?.[id] ?? []), join(build, "services", spec.name, "server.js")], env);
    const sidecar = launch(`envoy-${id}`, `${id} sidecar`, tool("envoy"), ["-c", join(ROOT, "envoy", "local", `sidecar-${id}.yaml`), "--disable-hot-restart", "-l", "warn", ...threads(process.env.SIDECAR_THREADS)]);
    apps.set(id, app);
    running.push({
      id,
      service: spec.name,
      version,
      ...ports,
      get app() {
        return app.child;
      },
      get sidecar() {
        return sidecar.child;
      },
    });
  }
  const edge = launch("envoy-edge", "edge", tool("envoy"), ["-c", join(ROOT, "envoy", "local", "edge.yaml"), "--disable-hot-restart", "-l", "warn", ...threads(process.env.EDGE_THREADS)]);

  const stop = async () => {
    await Promise.all([...processes.values()].map((p) => p.stop()));
    process.off("exit", killAll);
    releaseRunDir();
  };
  const app = (id: string) => {
    const found = apps.get(id);
    if (!found) throw new Error(`no instance ${id} in this mesh (${[...apps.keys()].join(", ")})`);
    return found;
  };
  const mesh: Mesh = {
    redisUrl,
    redisClusterNodes,
    edge: `127.0.0.1:${localPorts.edge}`,
    edgeAdmin: `http://127.0.0.1:${localPorts.edgeAdmin}`,
    instances: running,
    logDir,
    get redis() {
      return redis?.child;
    },
    get edgeProcess() {
      return edge.child;
    },
    stop,
    killApp: (id, signal = "SIGKILL") => app(id).stop(signal),
    restartApp: async (id) => {
      app(id).start();
      const instance = running.find((i) => i.id === id)!;
      await waitServing(`127.0.0.1:${instance.appPort}`, "", options.readyTimeoutMs ?? 60_000);
    },
    restarts: () => Object.fromEntries([...processes].map(([id, p]) => [id, p.restarts])),
  };
  try {
    const timeout = options.readyTimeoutMs ?? 90_000;
    const ready = async () => {
      await dataReady;
      await Promise.all(
        running.map(async (i) => {
          const logOf = () => `; its log (${app(i.id).spec.logFile}) ends:\n${indent(app(i.id).cause())}`;
          await waitServing(`127.0.0.1:${i.appPort}`, "", timeout).catch((err: Error) => Promise.reject(new Error(`${i.id} app: ${err.message}${logOf()}`)));
          // The sidecar's ingress takes mTLS only; the edge's health checks below go through it.
          await waitEnvoyReady(`http://127.0.0.1:${i.sidecarAdminPort}`, timeout);
        }),
      );
      await waitEdgeHealthy(mesh.edgeAdmin, running, timeout);
      await warmUp(mesh);
    };
    await Promise.race([ready(), startFailed, aborted(options.signal)]);
  } catch (err) {
    await stop();
    throw new Error(`${(err as Error).message}\nlogs: ${logDir}`);
  }
  // Up: from now on a process that dies is restarted, as Kubernetes would.
  for (const p of processes.values()) p.supervise();
  return mesh;
}
