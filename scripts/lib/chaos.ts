// Chaos runs (`npm run chaos`, scripts/chaos.ts): kill -9 each part of the mesh in turn
// under ghz load through the edge, and measure what callers saw. For each fault: the edge's calls by gRPC code (ghz), sampled Predict
// answers by fallback level (Node calls with bypass_cache, so each one walks the
// ladder), every answer by rung from the prediction instances' /metrics, the time
// until PRIMARY answers again and until the killed process serves again. Writes
// bench/results/chaos.md.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { ConnectError, Code } from "@connectrpc/connect";
import { FallbackLevel, PredictionService } from "../../gen/recsys/prediction/v1/prediction_pb.js";
import { createServiceClient } from "../../services/kit/index.js";
import { ghz } from "../../bench/harness.js";
import { setRuntime } from "./envoy-admin.js";
import { waitEdgeHealthy, waitEnvoyReady, waitRedis, waitServing, type Mesh, type RunningInstance } from "./mesh.js";
import { loadGeneratorAuth } from "./token.js";

/**
 * A process to kill (or, for "aborts", a share of calls its sidecar fails on purpose),
 * how to tell it serves again, and the best answer the rest of the mesh can still give.
 */
export interface Fault {
  name: string;
  kind: "app" | "sidecar" | "redis" | "aborts";
  /** Instance id for app, sidecar and aborts faults. */
  instance?: string;
  /** For "aborts": the percentage of calls the instance's sidecar aborts (runtime chaos.abort_percent) from the fault to the end of the load. */
  abortPercent?: number;
  /** The best rung Predict can reach while this process is down (bypassing the cache). */
  requires: FallbackLevel;
}

export const faults: Fault[] = [
  { name: "feature app", kind: "app", instance: "feature", requires: FallbackLevel.SIMPLIFIED },
  { name: "retrieval app", kind: "app", instance: "retrieval", requires: FallbackLevel.POPULAR },
  { name: "experiment app", kind: "app", instance: "experiment", requires: FallbackLevel.PRIMARY },
  { name: "prediction-v1 app", kind: "app", instance: "prediction-v1", requires: FallbackLevel.PRIMARY },
  { name: "prediction-v2 app", kind: "app", instance: "prediction-v2", requires: FallbackLevel.PRIMARY },
  { name: "redis", kind: "redis", requires: FallbackLevel.SIMPLIFIED },
  { name: "prediction-v1 sidecar (the edge's upstream)", kind: "sidecar", instance: "prediction-v1", requires: FallbackLevel.PRIMARY },
  // Retrieval still answers most calls: outlier detection must not eject its only host
  // into "no healthy upstream", and a failed call falls to POPULAR, not STATIC.
  { name: "30% aborts on retrieval's sidecar", kind: "aborts", instance: "retrieval", abortPercent: 30, requires: FallbackLevel.POPULAR },
];

/** The rungs a call that bypasses the cache can land on, best first (CACHED needs the cache). */
const liveLadder = [FallbackLevel.PRIMARY, FallbackLevel.SIMPLIFIED, FallbackLevel.POPULAR, FallbackLevel.STATIC];
/** The rung one below `level` on the live ladder: the worst a fault may cost beyond what it requires. */
export const oneRungBelow = (level: FallbackLevel) => liveLadder[Math.min(liveLadder.indexOf(level) + 1, liveLadder.length - 1)]!;
export const levelName = (level: FallbackLevel) => FallbackLevel[level];

export interface Sample {
  startedMs: number;
  /** A fallback level name, or the gRPC code name of an error. */
  outcome: string;
  /** The error's message ("upstream request timeout", "no healthy upstream"...), for errors. */
  error?: string;
}

export interface FaultResult {
  fault: Fault;
  /** ghz through the edge: calls by gRPC code. */
  edgeCodes: Record<string, number>;
  /** Sampled Predict calls (bypass_cache): answers by level, errors by code. */
  sampled: Record<string, number>;
  samples: Sample[];
  /** Every Predict answer by rung, from the prediction instances' /metrics. */
  answersByRung: Record<string, number>;
  /** From the kill until PRIMARY answers again (a run of PRIMARY samples), or null if it never did. */
  primaryAgainMs: number | null;
  /** From the kill until the killed process serves again, or null if it did not within the run. */
  backMs: number | null;
  /** The worst sampled level, or "error". */
  worst: string;
}

export interface FaultRunOptions {
  /** ghz load through the edge. */
  concurrency: number;
  rps: number;
  durationS: number;
  /** Seconds of load before the kill. */
  killAfterS: number;
  /** Seconds of sampling after the killed process is back (when that is past the load). */
  settleS: number;
  /** Concurrent Node samplers of Predict with bypass_cache. */
  samplers: number;
  users: number;
  dataDir: string;
}

const user = (i: number) => `u${String(i + 1).padStart(6, "0")}`;

function instance(mesh: Mesh, id: string): RunningInstance {
  const found = mesh.instances.find((i) => i.id === id);
  if (!found) throw new Error(`no instance ${id}`);
  return found;
}

/** Applies the fault: SIGKILL, or aborts switched on at the sidecar. */
async function inject(mesh: Mesh, fault: Fault): Promise<void> {
  if (fault.kind === "aborts") return setRuntime(sidecarAdmin(mesh, fault), { "chaos.abort_percent": fault.abortPercent! });
  process.kill(pidOf(mesh, fault), "SIGKILL");
}

const sidecarAdmin = (mesh: Mesh, fault: Fault) => `http://127.0.0.1:${instance(mesh, fault.instance!).sidecarAdminPort}`;

function pidOf(mesh: Mesh, fault: Fault): number {
  const pid = fault.kind === "redis" ? mesh.redis?.pid : fault.kind === "app" ? instance(mesh, fault.instance!).app.pid : instance(mesh, fault.instance!).sidecar.pid;
  if (!pid) throw new Error(`${fault.name} is not running`);
  return pid;
}

/** Resolves once the killed process serves again: the app's health, the sidecar's /ready, Redis's PING. */
async function serving(mesh: Mesh, fault: Fault, timeoutMs: number): Promise<void> {
  if (fault.kind === "redis") return waitRedis(mesh.redisUrl, timeoutMs);
  if (fault.kind === "aborts") throw new Error("aborts last until the load ends");
  const i = instance(mesh, fault.instance!);
  if (fault.kind === "app") return waitServing(`127.0.0.1:${i.appPort}`, "", timeoutMs);
  return waitEnvoyReady(`http://127.0.0.1:${i.sidecarAdminPort}`, timeoutMs);
}

/** Predict answers by rung, summed over the prediction instances; a restarted instance's counters start again from 0. */
class RungCounter {
  private readonly last = new Map<string, number>();
  readonly totals: Record<string, number> = {};
  constructor(private readonly urls: string[]) {}

  async scrape(): Promise<void> {
    await Promise.all(
      this.urls.map(async (url) => {
        const text = await fetch(url, { signal: AbortSignal.timeout(1000) }).then((r) => r.text(), () => "");
        for (const match of text.matchAll(/^recsys_prediction_answers_total\{([^}]*)\} (\d+)/gm)) {
          const rung = /rung="([^"]+)"/.exec(match[1]!)?.[1] ?? "unknown";
          const key = `${url} ${match[1]}`;
          const value = Number(match[2]);
          const before = this.last.get(key);
          // First sight of a series counts nothing; a drop means the process restarted.
          const delta = before === undefined ? 0 : value >= before ? value - before : value;
          this.last.set(key, value);
          this.totals[rung] = (this.totals[rung] ?? 0) + delta;
        }
      }),
    );
  }
}

/** Kills one process with SIGKILL (or switches on aborts) under load and measures what callers saw. */
export async function runFault(mesh: Mesh, fault: Fault, options: FaultRunOptions): Promise<FaultResult> {
  const dataFile = join(options.dataDir, "users.json");
  writeFileSync(dataFile, JSON.stringify(Array.from({ length: options.users }, (_, i) => ({ user_id: user(i), num_predictions: 10 }))));
  const metricsUrls = mesh.instances.filter((i) => i.service === "prediction").map((i) => `http://127.0.0.1:${i.metricsPort}/metrics`);
  const rungs = new RungCounter(metricsUrls);
  await rungs.scrape();

  const start = performance.now();
  const endAt = start + options.durationS * 1000;
  // As a backend would call: with a token (anonymous callers get a small per-address limit).
  const auth = await loadGeneratorAuth(`chaos-${fault.name.replace(/\W+/g, "-")}`);
  const load = ghz({ name: fault.name, address: mesh.edge, call: "recsys.prediction.v1.PredictionService.Predict", proto: "recsys/prediction/v1/prediction.proto", dataFile, concurrency: options.concurrency, rps: options.rps, durationS: options.durationS, metadata: auth });

  const samples: Sample[] = [];
  const client = createServiceClient(PredictionService, mesh.edge);
  // Sampling goes on past the load until the killed process has been back a while, so
  // the return to PRIMARY is seen; at most a minute past the kill.
  let sampleUntil = Number.POSITIVE_INFINITY;
  const samplers = Array.from({ length: options.samplers }, async (_, w) => {
    for (let i = 0; performance.now() < sampleUntil; i++) {
      const startedMs = performance.now() - start;
      const userId = user((w * 7919 + i * 31) % options.users);
      const sample = await client.predict({ userId, numPredictions: 10, bypassCache: true }, { timeoutMs: 3000, headers: auth }).then(
        (answer): Sample => ({ startedMs, outcome: levelName(answer.metadata?.fallbackLevel ?? FallbackLevel.UNSPECIFIED) }),
        (err: unknown): Sample => ({ startedMs, outcome: Code[ConnectError.from(err).code]!, error: ConnectError.from(err).rawMessage }),
      );
      samples.push(sample);
      await new Promise((r) => setTimeout(r, 50));
    }
  });
  let scraping = true;
  const scraper = (async () => {
    while (scraping) {
      await rungs.scrape();
      await new Promise((r) => setTimeout(r, 500));
    }
  })();

  await new Promise((r) => setTimeout(r, options.killAfterS * 1000));
  const killedMs = performance.now() - start;
  await inject(mesh, fault);
  if (fault.kind === "aborts") sampleUntil = endAt;
  // Let the process die before asking whether it serves again.
  await new Promise((r) => setTimeout(r, 100));
  const back = fault.kind === "aborts"
    ? Promise.resolve(null)
    : serving(mesh, fault, 60_000).then(
        () => performance.now() - start - killedMs,
        () => null,
      );
  if (fault.kind !== "aborts") void back.then((ms) => (sampleUntil = Math.max(endAt, start + killedMs + (ms === null ? 60_000 : ms + options.settleS * 1000))));

  const [report] = await Promise.all([load, ...samplers]);
  if (fault.kind === "aborts") await setRuntime(sidecarAdmin(mesh, fault), { "chaos.abort_percent": 0 });
  const backMs = await back;
  scraping = false;
  await scraper;
  await rungs.scrape();

  const after = samples.filter((s) => s.startedMs >= killedMs).sort((a, b) => a.startedMs - b.startedMs);
  const primaryAgainMs = primaryRunStart(after, killedMs);
  const sampled: Record<string, number> = {};
  for (const s of after) sampled[s.outcome] = (sampled[s.outcome] ?? 0) + 1;
  const worst = after.some((s) => s.error !== undefined) ? "error" : liveLadder.map(levelName).reverse().find((name) => sampled[name]) ?? "none";
  return { fault, edgeCodes: (report.status_codes as Record<string, number>) ?? {}, sampled, samples, answersByRung: rungs.totals, primaryAgainMs, backMs, worst };
}

/** Ms from the kill to the first of 10 PRIMARY samples in a row (by start time). */
function primaryRunStart(after: Sample[], killedMs: number): number | null {
  const run = 10;
  for (let i = 0; i + run <= after.length; i++) {
    if (after.slice(i, i + run).every((s) => s.outcome === levelName(FallbackLevel.PRIMARY))) return Math.max(0, after[i]!.startedMs - killedMs);
  }
  return null;
}

/** Waits until the killed process serves and the edge sees every instance healthy again, before the next fault. */
export async function waitWhole(mesh: Mesh, timeoutMs = 60_000): Promise<void> {
  for (const i of mesh.instances) {
    await waitServing(`127.0.0.1:${i.appPort}`, "", timeoutMs);
    await waitEnvoyReady(`http://127.0.0.1:${i.sidecarAdminPort}`, timeoutMs);
  }
  await waitEdgeHealthy(mesh.edgeAdmin, mesh.instances, timeoutMs);
}

const fmt = (counts: Record<string, number>) =>
  Object.entries(counts)
    .filter(([, n]) => n > 0)
    .sort(([, a], [, b]) => b - a)
    .map(([k, n]) => `${k} ${n}`)
    .join(", ") || "none";
const seconds = (ms: number | null) => (ms === null ? "not within the run" : `${(ms / 1000).toFixed(1)} s`);
/** A killed process's restart time; aborts end with the load, nothing restarts. */
const backCell = (r: FaultResult) => (r.fault.kind === "aborts" ? "n/a (aborts until the load ends)" : seconds(r.backMs));

/** One fault's outcome on one line, as the run prints it. */
export const faultSummary = (r: FaultResult) => `edge: ${fmt(r.edgeCodes)}; sampled: ${fmt(r.sampled)}; PRIMARY again ${seconds(r.primaryAgainMs)}; back ${backCell(r)}`;

export function chaosTable(results: FaultResult[]): string {
  const rows = results.map((r) => {
    const allowed = levelName(oneRungBelow(r.fault.requires));
    const within = r.worst !== "error" && liveLadder.map(levelName).indexOf(r.worst) <= liveLadder.map(levelName).indexOf(allowed);
    return `| ${r.fault.name} | ${fmt(r.edgeCodes)} | ${fmt(r.sampled)} | ${fmt(r.answersByRung)} | ${levelName(r.fault.requires)} (worst allowed ${allowed}): ${within ? "yes" : "**no**"} | ${r.fault.kind === "aborts" ? "n/a" : seconds(r.primaryAgainMs)} | ${backCell(r)} |`;
  });
  return [
    "| fault | edge calls by code (ghz) | sampled Predict after the kill (bypass_cache) | all answers by rung (/metrics) | best rung possible: within one rung? | PRIMARY again after | process back after |",
    "|---|---|---|---|---|---|---|",
    ...rows,
  ].join("\n");
}
