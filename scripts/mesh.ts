// Brings the mesh up on one machine without Docker: Redis (unless REDIS_URL is
// given), every service instance from envoy/topology.ts with its Envoy sidecar, and
// the edge Envoy. Used by `npm start`, the mesh tests and the end-to-end benchmark.
import { existsSync, mkdirSync, openSync, readFileSync, writeFileSync } from "node:fs";
import { spawn, type ChildProcess } from "node:child_process";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Health, HealthCheckResponse_ServingStatus } from "../gen/grpc/health/v1/health_pb.js";
import { instances, localPorts, localRedisPort, type ServiceSpec } from "../envoy/topology.js";
import { ROOT, tool } from "./tools.js";

export interface MeshOptions {
  /** Only these services (default: every service whose server exists). */
  only?: string[];
  /** Use this Redis instead of starting one. */
  redisUrl?: string;
  /** Port for the Redis the mesh starts. */
  redisPort?: number;
  /** Extra env for every app (LOG_LEVEL, ADMIN_TOKEN, ...). */
  env?: Record<string, string>;
  /** Extra env per instance id ("prediction-v2"). */
  instanceEnv?: Record<string, Record<string, string>>;
  /** Extra node flags per instance id, e.g. ["--cpu-prof"] for profiling. */
  instanceNodeArgs?: Record<string, string[]>;
  logDir?: string;
  /** How long to wait for every instance to report SERVING. */
  readyTimeoutMs?: number;
}

export interface RunningInstance {
  id: string;
  service: string;
  version: string;
  appPort: number;
  ingressPort: number;
  sidecarAdminPort: number;
  metricsPort: number;
  app: ChildProcess;
  sidecar: ChildProcess;
}

export interface Mesh {
  redisUrl: string;
  edge: string;
  edgeAdmin: string;
  instances: RunningInstance[];
  logDir: string;
  /** Stops one instance's app (chaos tests), leaving its sidecar up. */
  killApp(id: string, signal?: NodeJS.Signals): Promise<void>;
  /** Starts a stopped instance's app again. */
  restartApp(id: string): Promise<void>;
  stop(): Promise<void>;
}

const serverEntry = (name: string) => join(ROOT, "services", name, "server.ts");

export function availableServices(): string[] {
  return [...new Set(instances.map((i) => i.service.name))].filter((name) => existsSync(serverEntry(name)));
}

/** Addresses of a caller's upstreams: its own sidecar's egress listeners. */
function upstreamEnv(spec: ServiceSpec, version: string): Record<string, string> {
  return Object.fromEntries(spec.upstreams.map((u) => [`${u.toUpperCase()}_ADDR`, `127.0.0.1:${localPorts.egress(spec.name, version, u)}`]));
}

function stopChild(child: ChildProcess | undefined, timeoutMs = 15_000): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.once("exit", () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill("SIGTERM");
  });
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
  throw new Error(`${service} at ${address} not SERVING after ${timeoutMs} ms (last: ${last})`);
}

/** Waits until the edge's active health checks see every running instance healthy. */
async function waitEdgeHealthy(adminUrl: string, running: RunningInstance[], timeoutMs: number): Promise<void> {
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
async function materialize(redisUrl: string, logDir: string): Promise<void> {
  const dataDir = join(ROOT, ".run", "data");
  mkdirSync(dataDir, { recursive: true });
  const features = join(ROOT, "models", "features", "v1");
  const jobs: [string, string[]][] = [
    [rebasedCopy(join(features, "user_features.jsonl"), dataDir), ["--view", "user_profile"]],
    [rebasedCopy(join(features, "item_features.jsonl"), dataDir), ["--view", "item_profile"]],
    [join(ROOT, "models", "catalog", "v1", "items.jsonl"), ["--view", "catalog"]],
  ];
  for (const [file, extra] of jobs) {
    const log = openSync(join(logDir, "materialize.log"), "a");
    const child = spawn("node", ["--import", "tsx", join(ROOT, "services", "feature", "materialize.ts"), file, "--redis-url", redisUrl, "--restart", ...extra], { cwd: ROOT, stdio: ["ignore", log, log] });
    const code = await new Promise<number | null>((resolve) => child.on("exit", resolve));
    if (code !== 0) throw new Error(`materializing ${file} failed (exit ${code}); see ${join(logDir, "materialize.log")}`);
  }
}

async function waitRedis(url: string, timeoutMs: number): Promise<void> {
  const { Redis } = await import("ioredis");
  const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
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
  const { PredictionService } = await import("../gen/recsys/prediction/v1/prediction_pb.js");
  const client = createClient(PredictionService, createGrpcTransport({ baseUrl: `http://${mesh.edge}` }));
  for (const version of versions) {
    for (let i = 0; i < 10; i++) {
      const userId = `warmup-${i}`;
      await client.predict({ userId, numPredictions: 10, bypassCache: true }, { headers: { "x-canary": version }, timeoutMs: 5000 }).catch(() => undefined);
    }
  }
}

export async function startMesh(options: MeshOptions = {}): Promise<Mesh> {
  const logDir = options.logDir ?? join(ROOT, ".run", "logs");
  mkdirSync(logDir, { recursive: true });
  const children: ChildProcess[] = [];
  const launch = (id: string, command: string, args: string[], env: Record<string, string> = {}) => {
    const log = openSync(join(logDir, `${id}.log`), "a");
    const child = spawn(command, args, { cwd: ROOT, env: { ...process.env, ...env }, stdio: ["ignore", log, log] });
    children.push(child);
    return child;
  };

  let redisUrl = options.redisUrl ?? process.env.REDIS_URL;
  if (!redisUrl) {
    const port = options.redisPort ?? localRedisPort;
    const dir = join(ROOT, ".run", "redis");
    mkdirSync(dir, { recursive: true });
    launch("redis", tool("redis-server"), ["--port", String(port), "--bind", "127.0.0.1", "--dir", dir, "--appendonly", "yes", "--save", ""]);
    redisUrl = `redis://127.0.0.1:${port}`;
  }

  const wanted = new Set(options.only ?? availableServices());
  // Envoy worker threads (default: one per core); SIDECAR_THREADS / EDGE_THREADS tune it.
  const threads = (value: string | undefined) => (value ? ["--concurrency", value] : []);
  // Data loads while the services start; readiness waits for both.
  const url = redisUrl;
  const dataReady = wanted.has("feature") ? waitRedis(url, 15_000).then(() => materialize(url, logDir)) : Promise.resolve();
  dataReady.catch(() => undefined);
  const running: RunningInstance[] = [];
  const appEnv = new Map<string, Record<string, string>>();
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
      ...upstreamEnv(spec, version),
      ...options.env,
      ...options.instanceEnv?.[id],
    };
    appEnv.set(id, env);
    const app = launch(id, "node", ["--import", "tsx", ...(options.instanceNodeArgs?.[id] ?? []), serverEntry(spec.name)], env);
    const sidecar = launch(`envoy-${id}`, tool("envoy"), ["-c", join(ROOT, "envoy", "local", `sidecar-${id}.yaml`), "--disable-hot-restart", "-l", "warn", ...threads(process.env.SIDECAR_THREADS)]);
    running.push({ id, service: spec.name, version, ...ports, app, sidecar });
  }
  launch("envoy-edge", tool("envoy"), ["-c", join(ROOT, "envoy", "local", "edge.yaml"), "--disable-hot-restart", "-l", "warn", ...threads(process.env.EDGE_THREADS)]);

  const stop = async () => {
    await Promise.all(children.map((c) => stopChild(c)));
  };
  const mesh: Mesh = {
    redisUrl,
    edge: `127.0.0.1:${localPorts.edge}`,
    edgeAdmin: `http://127.0.0.1:${localPorts.edgeAdmin}`,
    instances: running,
    logDir,
    stop,
    killApp: (id, signal = "SIGKILL") => {
      const instance = running.find((i) => i.id === id)!;
      const exited = new Promise<void>((resolve) => instance.app.once("exit", () => resolve()));
      instance.app.kill(signal);
      return exited;
    },
    restartApp: async (id) => {
      const instance = running.find((i) => i.id === id)!;
      instance.app = launch(id, "node", ["--import", "tsx", serverEntry(instance.service)], appEnv.get(id)!);
      await waitServing(`127.0.0.1:${instance.appPort}`, "", options.readyTimeoutMs ?? 60_000);
    },
  };
  try {
    const timeout = options.readyTimeoutMs ?? 90_000;
    await dataReady;
    await Promise.all(
      running.map(async (i) => {
        await waitServing(`127.0.0.1:${i.appPort}`, "", timeout);
        // Through the sidecar too: the mesh path is what callers use.
        await waitServing(`127.0.0.1:${i.ingressPort}`, "", timeout);
      }),
    );
    await waitEdgeHealthy(mesh.edgeAdmin, running, timeout);
    await warmUp(mesh);
  } catch (err) {
    await stop();
    throw new Error(`${(err as Error).message}\nlogs: ${logDir}`);
  }
  return mesh;
}
