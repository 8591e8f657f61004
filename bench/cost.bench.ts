// `npm run bench -- cost`: CPU per call, summed over every process of the mesh, for
// echo, cached Predict and full Predict through the edge. CPU seconds per process
// come from /proc (utime + stime) before and after a closed-loop ghz run, divided by
// the calls served: a figure that holds on a noisy machine where QPS does not.
// What each process burns while idle (health checks, refresh timers, stats) is
// measured just before each run and taken out, so a slow run on a crowded machine
// does not spread the mesh's background work over few calls.
// Processes are found by the ports they listen on (envoy/topology.ts), so ghz and
// this process are not counted.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { instances, localListeners } from "../envoy/topology.js";
import { startMesh, type Mesh } from "../scripts/lib/mesh.js";
import { cpuSeconds, ghz, ratio, warmUpEachMessage, zipfSampler, type BenchSuite, type ScenarioResult } from "./harness.js";
import { series } from "../scripts/lib/canary-stats.js";
import { loadGeneratorAuth } from "../scripts/lib/token.js";
import { ROOT } from "../scripts/lib/tools.js";

const seconds = Number(process.env.COST_SECONDS ?? 10);
const idleSeconds = Number(process.env.COST_IDLE_SECONDS ?? 3);
const concurrency = Number(process.env.COST_CONCURRENCY ?? 16);
/** Only the scenarios whose name contains one of these (comma-separated): COST_SCENARIOS=full,echo. */
const scenarioFilter = (process.env.COST_SCENARIOS ?? "").split(",").filter(Boolean);
/** COST_PROFILE_DIR=<dir>: every app writes a .cpuprofile there when the mesh stops. */
const profileDir = process.env.COST_PROFILE_DIR;

/** The mesh's processes, named by what listens: "prediction-v1 app", "edge", "redis"... */
function meshProcesses(): Map<number, string> {
  const byPort = new Map(localListeners().map((l) => [l.port, l.what]));
  const out = execFileSync("ss", ["-ltnpH"], { encoding: "utf8" });
  const processes = new Map<number, string>();
  for (const line of out.split("\n")) {
    const port = Number(line.split(/\s+/)[3]?.split(":").pop());
    const pid = Number(/pid=(\d+)/.exec(line)?.[1]);
    const what = byPort.get(port);
    if (!what || !pid || processes.has(pid)) continue;
    // One name per process: "prediction-v1 app (gRPC)" and "(metrics)" are one app.
    processes.set(pid, what.replace(/ \(.*\)$/, "").replace(/ (ingress|admin|egress to \w+)$/, ""));
  }
  return processes;
}

function snapshot(processes: Map<number, string>): Map<number, number> {
  return new Map([...processes.keys()].map((pid) => [pid, cpuSeconds(pid)]));
}

interface Workload {
  name: string;
  call: string;
  proto: string;
  messages: unknown[];
  /** Seconds of the same load before measuring, for the steady state of the caches. */
  warmUpS?: number;
  /** Before measuring, one call for each distinct message (the harness's warmUpEachMessage). */
  warmUpEachMessage?: boolean;
}

/** Predictions prediction-v1 computed for requests so far (not background refreshes). */
async function computedForRequests(mesh: Mesh): Promise<number> {
  const port = mesh.instances.find((i) => i.id === "prediction-v1")!.metricsPort;
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  return series(text, "recsys_prediction_computations_total")
    .filter((s) => s.labels.reason === "request")
    .reduce((sum, s) => sum + s.value, 0);
}

function userIds(): string[] {
  return readFileSync(join(ROOT, "models", "embeddings", "v1", "user_ids.txt"), "utf8").trim().split("\n");
}

function workloads(): Workload[] {
  const users = userIds();
  const zipf = zipfSampler(users.length, 1.1, 42);
  const predict = { call: "recsys.prediction.v1.PredictionService.Predict", proto: "recsys/prediction/v1/prediction.proto" };
  return [
    { name: "echo via edge + sidecar", call: "recsys.echo.v1.EchoService.Echo", proto: "recsys/echo/v1/echo.proto", messages: [{ message: "x".repeat(256) }] },
    { name: "cached Predict (Zipf 1.1)", ...predict, warmUpEachMessage: true, messages: Array.from({ length: 20_000 }, () => ({ user_id: users[zipf()], num_predictions: 10 })) },
    // Warmed up too: the steady state, where the item features of a 5,000-item catalogue are held locally.
    { name: "full Predict (cache off)", ...predict, warmUpS: 5, messages: Array.from({ length: 20_000 }, (_, i) => ({ user_id: users[(i * 7919) % users.length], num_predictions: 10, bypass_cache: true })) },
  ];
}

async function measureCost(mesh: Mesh, w: Workload, dir: string): Promise<ScenarioResult> {
  const dataFile = join(dir, `${w.name.replace(/\W+/g, "-")}.json`);
  writeFileSync(dataFile, JSON.stringify(w.messages));
  const metadata = await loadGeneratorAuth("bench-cost");
  const load = { address: mesh.edge, call: w.call, proto: w.proto, dataFile, concurrency, connections: 4, metadata };
  const run = (name: string, durationS = seconds) => ghz({ name, ...load, durationS });
  if (w.warmUpS) await run(`${w.name} warm-up`, w.warmUpS);
  if (w.warmUpEachMessage) await warmUpEachMessage({ name: `${w.name} warm-up`, ...load });
  // Read outside both CPU windows: a scrape costs the app CPU too.
  const computedBefore = await computedForRequests(mesh);
  const processes = meshProcesses();
  const idleStart = snapshot(processes);
  const idleFrom = performance.now();
  await new Promise((resolve) => setTimeout(resolve, idleSeconds * 1000));
  const before = snapshot(processes);
  const idleS = (performance.now() - idleFrom) / 1000;
  const started = performance.now();
  const result = await run(w.name);
  const after = snapshot(processes);
  const computed = (await computedForRequests(mesh)) - computedBefore;
  const elapsedS = (performance.now() - started) / 1000;
  // Every call served in the window costs CPU, the ones ghz left out of its tally too.
  const calls = Math.max(1, (result.count as number) + ((result.skipped_first as number | undefined) ?? 0));
  const byProcess: Record<string, number> = {};
  const idleByProcess: Record<string, number> = {};
  for (const [pid, what] of processes) {
    const idlePerS = (before.get(pid)! - idleStart.get(pid)!) / idleS;
    const busy = Math.max(0, after.get(pid)! - before.get(pid)! - idlePerS * elapsedS);
    byProcess[what] = Math.round((byProcess[what] ?? 0) + (busy * 1e6) / calls);
    idleByProcess[what] = Math.round(((idleByProcess[what] ?? 0) + idlePerS * 1000) * 10) / 10;
  }
  const total = Object.values(byProcess).reduce((a, b) => a + b, 0);
  return {
    ...result,
    cpu_us_per_call: byProcess,
    cpu_us_per_call_total: total,
    idle_cpu_ms_per_s: idleByProcess,
    // Predictions computed on the request path (after coalescing) per call: 0 when every answer came from the cache.
    computed_per_call: Math.round((computed / calls) * 1000) / 1000,
  };
}

const suite: BenchSuite = {
  name: "cost",
  async run() {
    const instanceNodeArgs = profileDir ? Object.fromEntries(instances.map((i) => [i.id, ["--cpu-prof", "--cpu-prof-dir", profileDir]])) : undefined;
    const mesh = await startMesh({ env: { LOG_LEVEL: "warn" }, instanceNodeArgs });
    const dir = mkdtempSync(join(tmpdir(), "recsys-cost-"));
    try {
      const results: ScenarioResult[] = [];
      const selected = workloads().filter((w) => scenarioFilter.length === 0 || scenarioFilter.some((f) => w.name.includes(f)));
      for (const w of selected) {
        const r = await measureCost(mesh, w, dir);
        console.log(`${w.name}: ${r.qps} QPS, ${r.cpu_us_per_call_total} us CPU per call, ${r.computed_per_call} computed per call`, r.cpu_us_per_call);
        results.push(r);
      }
      const total = (name: string) => results.find((r) => r.name === name)?.cpu_us_per_call_total as number | undefined;
      const [echo, cached, full] = [total("echo via edge + sidecar"), total("cached Predict (Zipf 1.1)"), total("full Predict (cache off)")];
      const ratios = [];
      if (full !== undefined) ratios.push(ratio("full Predict CPU per call, all processes (us)", full, "<= 2500", full <= 2500));
      if (echo !== undefined && cached !== undefined) ratios.push(ratio("cached Predict / echo CPU per call", cached / echo, "<= 1.3", cached / echo <= 1.3));
      return { scenarios: results, ratios };
    } finally {
      await mesh.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  },
};
export default suite;
