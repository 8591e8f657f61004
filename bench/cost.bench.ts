// `npm run bench -- cost`: CPU per call, summed over every process of the mesh, for
// echo, cached Predict and full Predict through the edge. CPU seconds per process
// come from /proc (utime + stime) before and after a closed-loop ghz run, divided by
// the calls served: a figure that holds on a noisy machine where QPS does not.
// What each process burns while idle (health checks, refresh timers, stats) is
// measured just before each run and taken out, so a slow run on a crowded machine
// does not spread the mesh's background work over few calls.
// Processes are found by the ports they listen on (envoy/topology.ts), so ghz and
// this process are not counted. Prediction's CPU is also split by thread (event loop,
// ONNX workers, V8's helpers), and a full Predict's search and models are measured
// alone in this process after the mesh stops, for what the mesh spends above them.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { instances, localListeners } from "../envoy/topology.js";
import { startMesh, type Mesh } from "../scripts/lib/mesh.js";
import { cpuSeconds, cpuSecondsByThread, ghz, rankerBenchRows, ratio, warmUpEachMessage, zipfSampler, type BenchSuite, type ScenarioResult, type ThreadCpu } from "./harness.js";
import { series } from "../scripts/lib/canary-stats.js";
import { readEmbeddings } from "../services/kit/artifacts.js";
import { OnnxModel } from "../services/prediction/models.js";
import { loadPredictionConfig } from "../services/prediction/config.js";
import { loadRetrievalConfig } from "../services/retrieval/config.js";
import { ItemIndex, normalize } from "../services/retrieval/item-index.js";
import { loadGeneratorAuth } from "../scripts/lib/token.js";
import { ROOT } from "../scripts/lib/tools.js";

const seconds = Number(process.env.COST_SECONDS ?? 10);
const idleSeconds = Number(process.env.COST_IDLE_SECONDS ?? 3);
const concurrency = Number(process.env.COST_CONCURRENCY ?? 16);
/** Only the scenarios whose name contains one of these (comma-separated): COST_SCENARIOS=full,echo. */
const scenarioFilter = (process.env.COST_SCENARIOS ?? "").split(",").filter(Boolean);
/** Seconds per in-process measurement of a full Predict's search and models. */
const workSeconds = Number(process.env.COST_WORK_SECONDS ?? 2);
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
  const predictionPid = [...processes].find(([, what]) => what === "prediction-v1 app")?.[0];
  const readPredictionThreads = () => (predictionPid ? cpuSecondsByThread(predictionPid) : new Map<number, ThreadCpu>());
  const idleStart = snapshot(processes);
  const idleStartThreads = readPredictionThreads();
  const idleFrom = performance.now();
  await new Promise((resolve) => setTimeout(resolve, idleSeconds * 1000));
  const before = snapshot(processes);
  const beforeThreads = readPredictionThreads();
  const idleS = (performance.now() - idleFrom) / 1000;
  const started = performance.now();
  const result = await run(w.name);
  const after = snapshot(processes);
  const afterThreads = readPredictionThreads();
  const computed = (await computedForRequests(mesh)) - computedBefore;
  const elapsedS = (performance.now() - started) / 1000;
  // Every call served in the window costs CPU, the ones ghz left out of its tally too.
  const calls = Math.max(1, (result.count as number) + ((result.skipped_first as number | undefined) ?? 0));
  /** CPU seconds of the measured run above the idle rate, from three readings of one process or thread. */
  const busyAboveIdle = (atIdleStart: number, atStart: number, atEnd: number) => atEnd - atStart - ((atStart - atIdleStart) / idleS) * elapsedS;
  const byProcess: Record<string, number> = {};
  const idleByProcess: Record<string, number> = {};
  for (const [pid, what] of processes) {
    const idlePerS = (before.get(pid)! - idleStart.get(pid)!) / idleS;
    const busy = Math.max(0, busyAboveIdle(idleStart.get(pid)!, before.get(pid)!, after.get(pid)!));
    byProcess[what] = Math.round((byProcess[what] ?? 0) + (busy * 1e6) / calls);
    idleByProcess[what] = Math.round(((idleByProcess[what] ?? 0) + idlePerS * 1000) * 10) / 10;
  }
  const total = Object.values(byProcess).reduce((a, b) => a + b, 0);
  // Where prediction's own CPU goes: its event loop, the ONNX worker threads, V8's helpers.
  // Per thread, then summed by kind; what a thread that ended used is in "other".
  const threadSeconds: Record<string, number> = {};
  for (const [tid, { kind, seconds: usedAfter }] of afterThreads) {
    const usedBefore = beforeThreads.get(tid)?.seconds ?? 0;
    threadSeconds[kind] = (threadSeconds[kind] ?? 0) + busyAboveIdle(idleStartThreads.get(tid)?.seconds ?? usedBefore, usedBefore, usedAfter);
  }
  const predictionByThread: Record<string, number> = {};
  if (predictionPid) {
    for (const [kind, busy] of Object.entries(threadSeconds)) predictionByThread[kind] = Math.max(0, Math.round((busy * 1e6) / calls));
    const attributed = Object.values(predictionByThread).reduce((a, b) => a + b, 0);
    predictionByThread.other = Math.max(0, byProcess["prediction-v1 app"]! - attributed);
  }
  return {
    ...result,
    cpu_us_per_call: byProcess,
    cpu_us_per_call_total: total,
    prediction_v1_cpu_us_per_call_by_thread: predictionByThread,
    idle_cpu_ms_per_s: idleByProcess,
    // Predictions computed on the request path (after coalescing) per call: 0 when every answer came from the cache.
    computed_per_call: Math.round((computed / calls) * 1000) / 1000,
  };
}

/** CPU microseconds per call of fn, called back to back for about `durationS` (at least once) after a warm-up. */
async function cpuPerCall(fn: (i: number) => unknown, durationS: number): Promise<number> {
  for (let i = 0; i < 50; i++) await fn(i);
  const started = performance.now();
  const cpu = process.cpuUsage();
  let calls = 0;
  do await fn(calls++);
  while (performance.now() - started < durationS * 1000);
  const used = process.cpuUsage(cpu);
  return Math.round(((used.user + used.system) / calls) * 10) / 10;
}

/**
 * The work a full Predict cannot skip, measured in this process with nothing around it:
 * retrieval's ANN search over the served index with GetCandidates' k, and the two ONNX
 * rankers on one Predict's candidates, with the services' own configuration (read from
 * this environment, as the mesh's apps are). What the mesh spends above this is the cost
 * of serving it: RPC, proxies, features and ranking code, plumbing. The served rankers
 * score several requests' rows per run, which costs a little less per row.
 */
async function inProcessWork(durationS: number): Promise<ScenarioResult> {
  const retrieval = loadRetrievalConfig(process.env);
  const prediction = loadPredictionConfig(process.env);
  const { dim, items, users } = await readEmbeddings(resolve(ROOT, retrieval.MODELS_DIR, "embeddings", retrieval.EMBEDDINGS_VERSION));
  const vectors = items.vectors.slice();
  for (let row = 0; row < items.ids.length; row++) normalize(vectors.subarray(row * dim, (row + 1) * dim));
  const index = await ItemIndex.build(
    { ids: items.ids, categories: items.ids.map(() => ""), vectors },
    dim,
    { m: retrieval.HNSW_M, efConstruction: retrieval.HNSW_EF_CONSTRUCTION, efSearch: retrieval.HNSW_EF_SEARCH },
    { version: "bench", origin: "artifacts" },
  );
  const userVector = (i: number) => users.vectors.subarray((i % users.ids.length) * dim, ((i % users.ids.length) + 1) * dim);
  const work: Record<string, number> = {};
  work[`ANN search, k=${retrieval.CANDIDATES_ANN_K}, ${items.ids.length} items`] = await cpuPerCall((i) => index.search(userVector(i), retrieval.CANDIDATES_ANN_K), durationS);

  const rows = rankerBenchRows();
  const perRequest = prediction.CANDIDATES_K;
  for (const name of ["ranker-gbdt", "ranker-mlp"]) {
    const model = await OnnxModel.load(resolve(ROOT, prediction.MODELS_DIR, name, "v1"), { threads: prediction.ORT_THREADS });
    try {
      const width = model.featureCount;
      const batches = Math.floor(rows.length / (perRequest * width));
      const batch = (i: number) => rows.subarray((i % batches) * perRequest * width, ((i % batches) + 1) * perRequest * width);
      work[`${name}, ${perRequest} rows`] = await cpuPerCall((i) => model.score(batch(i), perRequest), durationS);
    } finally {
      await model.release();
    }
  }
  // Only CPU per call is measured here: no calls go through the mesh, so no rate or latency.
  return {
    name: "a full Predict's search and models, in process",
    qps: 0,
    p50_ms: 0,
    p95_ms: 0,
    p99_ms: 0,
    errors: 0,
    cpu_us_per_call: work,
    cpu_us_per_call_total: Math.round(Object.values(work).reduce((a, b) => a + b, 0)),
  };
}

const suite: BenchSuite = {
  name: "cost",
  async run() {
    const instanceNodeArgs = profileDir ? Object.fromEntries(instances.map((i) => [i.id, ["--cpu-prof", "--cpu-prof-dir", profileDir]])) : undefined;
    const results: ScenarioResult[] = [];
    const mesh = await startMesh({ env: { LOG_LEVEL: "warn" }, instanceNodeArgs });
    const dir = mkdtempSync(join(tmpdir(), "recsys-cost-"));
    try {
      const selected = workloads().filter((w) => scenarioFilter.length === 0 || scenarioFilter.some((f) => w.name.includes(f)));
      for (const w of selected) {
        const r = await measureCost(mesh, w, dir);
        console.log(`${w.name}: ${r.qps} QPS, ${r.cpu_us_per_call_total} us CPU per call, ${r.computed_per_call} computed per call`, r.cpu_us_per_call, "prediction-v1 app by thread:", r.prediction_v1_cpu_us_per_call_by_thread);
        results.push(r);
      }
    } finally {
      await mesh.stop();
      rmSync(dir, { recursive: true, force: true });
    }
    const total = (name: string) => results.find((r) => r.name === name)?.cpu_us_per_call_total as number | undefined;
    const [echo, cached, full] = [total("echo via edge + sidecar"), total("cached Predict (Zipf 1.1)"), total("full Predict (cache off)")];
    const ratios = [];
    if (full !== undefined) {
      ratios.push(ratio("full Predict CPU per call, all processes (us)", full, "<= 2500", full <= 2500));
      // With the mesh down, so nothing else competes for the cores. A failure here keeps the mesh's figures.
      const work = await inProcessWork(workSeconds).catch((err: unknown) => console.error("could not measure a full Predict's search and models in process:", err));
      if (work) {
        console.log(`${work.name}: ${work.cpu_us_per_call_total} us CPU`, work.cpu_us_per_call);
        results.push(work);
        const essential = work.cpu_us_per_call_total as number;
        ratios.push(ratio("full Predict CPU per call / its search and models in process", full / essential, "informational", true));
        // A full Predict takes echo's path (edge with its filters, rate-limit check, sidecar, app) and
        // does its search and models on top, so their sum bounds it from below on this machine.
        if (echo !== undefined) ratios.push(ratio("full Predict floor: echo via the mesh + its search and models in process (us)", echo + essential, "<= 2500, or 2.5 ms is out of reach", echo + essential <= 2500));
      }
    }
    if (echo !== undefined && cached !== undefined) ratios.push(ratio("cached Predict / echo CPU per call", cached / echo, "<= 1.3", cached / echo <= 1.3));
    return { scenarios: results, ratios };
  },
};
export default suite;
