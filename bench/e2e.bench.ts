// `npm run bench -- e2e`: the whole mesh as `npm start` brings it up, loaded with
// ghz through the edge. For each scenario: 5 s of quiet, the closed-loop ceiling, then an
// open-loop sweep of offered rates up to past saturation. The echo service behind
// the same edge and sidecar path, and called directly, gives the ceiling of the
// stack on this machine. Full Predict's ceiling against echo's is also measured side
// by side after the sweeps, each bracketed by two echo ceilings, and that ratio is the
// median of the rounds. Writes the scenarios and ratios (latest.json), a
// latency-throughput plot (e2e.svg) and a table (e2e.md).
import { existsSync, readFileSync, rmSync, writeFileSync, mkdtempSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import * as vega from "vega";
import { compile } from "vega-lite";
import { startMesh, type Mesh } from "../scripts/lib/mesh.js";
import { loadGeneratorAuth } from "../scripts/lib/token.js";
import { ROOT } from "../scripts/lib/tools.js";
import { ghz, percentile, ratio, warmUpEachMessage, zipfSampler, type BenchSuite, type ScenarioResult } from "./harness.js";

const seconds = Number(process.env.E2E_SECONDS ?? 6);
const fractions = (process.env.E2E_FRACTIONS ?? "0.25,0.5,0.75,0.9,1,1.2").split(",").map(Number);
/** Full Predict ceilings, each bracketed by echo ceilings, that the full / echo ratio is the median of. */
const bracketedRounds = Number(process.env.E2E_BRACKETED_ROUNDS ?? 5);
if (!Number.isInteger(bracketedRounds) || bracketedRounds < 1) throw new Error(`E2E_BRACKETED_ROUNDS must be a whole number of at least 1, not ${process.env.E2E_BRACKETED_ROUNDS}`);
/**
 * Quiet time before each sweep and before the bracketed ceilings, so the previous
 * workload's overload step (its backlog, the garbage it left) does not fall into the
 * next closed-loop ceiling.
 */
const settleSeconds = 5;
const settle = () => new Promise((resolve) => setTimeout(resolve, settleSeconds * 1000));

function userIds(): string[] {
  const file = join(ROOT, "models", "embeddings", "v1", "user_ids.txt");
  if (existsSync(file)) return readFileSync(file, "utf8").trim().split("\n");
  return Array.from({ length: 2000 }, (_, i) => `u${String(i + 1).padStart(6, "0")}`);
}

interface Workload {
  name: string;
  address: (mesh: Mesh) => string;
  call: string;
  proto: string;
  dataFile: string;
  /** Before the ceiling run, one call for each distinct message (the harness's warmUpEachMessage). */
  warmUpEachMessage?: boolean;
}

function writeData(dir: string, name: string, messages: unknown[]): string {
  const file = join(dir, `${name}.json`);
  writeFileSync(file, JSON.stringify(messages));
  return file;
}

function workloads(dir: string): Workload[] {
  const users = userIds();
  const zipf = zipfSampler(users.length, 1.1, 42);
  const cached = Array.from({ length: 20_000 }, () => ({ user_id: users[zipf()], num_predictions: 10 }));
  const full = Array.from({ length: 20_000 }, (_, i) => ({ user_id: users[(i * 7919) % users.length], num_predictions: 10, bypass_cache: true }));
  // Mixed: mostly returning users (cache), some cold requests and larger pages.
  const mixed = Array.from({ length: 20_000 }, (_, i) =>
    i % 10 < 7 ? cached[i] : i % 10 < 9 ? full[i] : { user_id: users[zipf()], num_predictions: 50, context: { device: "DEVICE_MOBILE" } },
  );
  const echo = [{ message: "x".repeat(256) }];
  const predict = { call: "recsys.prediction.v1.PredictionService.Predict", proto: "recsys/prediction/v1/prediction.proto" };
  const echoCall = { call: "recsys.echo.v1.EchoService.Echo", proto: "recsys/echo/v1/echo.proto" };
  return [
    { name: "echo direct", address: (m) => `127.0.0.1:${m.instances.find((i) => i.service === "echo")!.appPort}`, ...echoCall, dataFile: writeData(dir, "echo", echo) },
    { name: "echo via edge + sidecar", address: (m) => m.edge, ...echoCall, dataFile: writeData(dir, "echo", echo) },
    { name: "cached Predict (Zipf 1.1)", address: (m) => m.edge, ...predict, dataFile: writeData(dir, "cached", cached), warmUpEachMessage: true },
    { name: "full Predict (cache off)", address: (m) => m.edge, ...predict, dataFile: writeData(dir, "full", full) },
    { name: "mixed Predict", address: (m) => m.edge, ...predict, dataFile: writeData(dir, "mixed", mixed) },
  ];
}

/** The load generator's credentials, minted once for the whole run. */
type Metadata = Awaited<ReturnType<typeof loadGeneratorAuth>>;

/** One ghz run of a workload: closed loop at c=32, or open loop at `rps`. */
function ghzRun(mesh: Mesh, metadata: Metadata, w: Workload, name: string, rps?: number, extra: Record<string, unknown> = {}): Promise<ScenarioResult> {
  // ghz divides --rps among its workers: with more workers than requests per second
  // each worker's share rounds away and the offered rate is never reached. One worker
  // per request per second, up to 128, keeps every worker's share at one or more.
  return ghz({ name, address: w.address(mesh), call: w.call, proto: w.proto, dataFile: w.dataFile, concurrency: rps ? Math.min(128, rps) : 32, connections: 4, durationS: seconds, rps, metadata, extra: { workload: w.name, ...extra } });
}

async function sweep(mesh: Mesh, metadata: Metadata, w: Workload): Promise<{ ceiling: ScenarioResult; points: ScenarioResult[] }> {
  const run = (name: string, rps?: number) => ghzRun(mesh, metadata, w, name, rps);
  await settle();
  if (w.warmUpEachMessage) {
    await warmUpEachMessage({ name: `${w.name} warm-up`, address: w.address(mesh), call: w.call, proto: w.proto, dataFile: w.dataFile, concurrency: 32, connections: 4, metadata });
  }
  const ceiling = await run(`${w.name} ceiling (closed loop, c=32)`);
  const points: ScenarioResult[] = [];
  for (const f of fractions) {
    const rps = Math.max(10, Math.round(ceiling.qps * f));
    const point = await run(`${w.name} @ ${rps} rps offered`, rps);
    // A point that did not reach 95% of its offered rate measured a lower load than it says.
    points.push({ ...point, reached_offered_rate: point.qps >= 0.95 * rps });
  }
  return { ceiling, points };
}

/**
 * The candidate's ceiling against the reference's, measured side by side: reference,
 * candidate, reference, ... candidate, reference, closed loop, back to back. Each
 * candidate ceiling is divided by the mean of the two reference ceilings around it, which
 * cancels a machine that speeds up or slows down steadily over the run; neither workload
 * runs twice in a row, so neither finds the other's caches warm from itself. Two single
 * ceilings minutes apart move with whatever else the machine did in between.
 */
async function bracketedCeilings(mesh: Mesh, metadata: Metadata, reference: Workload, candidate: Workload): Promise<{ runs: ScenarioResult[]; ratios: number[] }> {
  await settle();
  const ceiling = (w: Workload, round: number) => ghzRun(mesh, metadata, w, `${w.name} ceiling (closed loop, c=32), bracketed round ${round}`, undefined, { bracketed_round: round });
  const runs: ScenarioResult[] = [];
  const ratios: number[] = [];
  let before = await ceiling(reference, 0);
  runs.push(before);
  for (let round = 1; round <= bracketedRounds; round++) {
    const measured = await ceiling(candidate, round);
    const after = await ceiling(reference, round);
    runs.push(measured, after);
    ratios.push(measured.qps / ((before.qps + after.qps) / 2));
    before = after;
  }
  return { runs, ratios };
}

async function plot(points: ScenarioResult[], file: string) {
  const values = points.flatMap((p) => [
    { workload: p.workload, offered: p.offered_rps, latency: p.p50_ms, quantile: "p50", reached: p.reached_offered_rate ? "yes" : "no (below 95%)" },
    { workload: p.workload, offered: p.offered_rps, latency: p.p99_ms, quantile: "p99", reached: p.reached_offered_rate ? "yes" : "no (below 95%)" },
  ]);
  const spec = compile({
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title: `recsys-mesh latency vs offered load (${cpus().length} cores, ${cpus()[0]?.model ?? ""})`,
    width: 640,
    height: 360,
    data: { values },
    mark: { type: "line", point: { filled: true } },
    encoding: {
      shape: { field: "reached", type: "nominal", title: "offered rate reached" },
      x: { field: "offered", type: "quantitative", title: "offered load (requests/s)" },
      y: { field: "latency", type: "quantitative", title: "latency (ms, log)", scale: { type: "log" } },
      color: { field: "workload", type: "nominal" },
      strokeDash: { field: "quantile", type: "nominal" },
    },
  } as never).spec;
  const view = new vega.View(vega.parse(spec), { renderer: "none" });
  writeFileSync(file, await view.toSVG());
}

function table(ceilings: ScenarioResult[], points: ScenarioResult[], bracketed: ScenarioResult[]): string {
  const rows = [
    "| workload | offered rps | achieved QPS | p50 ms | p99 ms | errors |",
    "|---|---|---|---|---|---|",
    ...ceilings.map((c) => `| ${c.workload} | ceiling (closed loop) | ${c.qps} | ${c.p50_ms.toFixed(2)} | ${c.p99_ms.toFixed(2)} | ${c.errors} |`),
    ...bracketed.map((c) => `| ${c.workload} | ceiling (closed loop), bracketed round ${c.bracketed_round} | ${c.qps} | ${c.p50_ms.toFixed(2)} | ${c.p99_ms.toFixed(2)} | ${c.errors} |`),
    ...points.map((p) => `| ${p.workload} | ${p.offered_rps}${p.reached_offered_rate ? "" : " (not reached)"} | ${p.qps} | ${p.p50_ms.toFixed(2)} | ${p.p99_ms.toFixed(2)} | ${p.errors} |`),
  ];
  return `${rows.join("\n")}\n`;
}

const suite: BenchSuite = {
  name: "e2e",
  async run() {
    const mesh = await startMesh({ env: { LOG_LEVEL: "warn" } });
    const dir = mkdtempSync(join(tmpdir(), "recsys-e2e-"));
    try {
      const results = new Map<string, { ceiling: ScenarioResult; points: ScenarioResult[] }>();
      const all = workloads(dir);
      const metadata = await loadGeneratorAuth("bench-e2e");
      for (const w of all) results.set(w.name, await sweep(mesh, metadata, w));
      const full = "full Predict (cache off)";
      const echoViaMesh = "echo via edge + sidecar";
      const bracketed = await bracketedCeilings(mesh, metadata, all.find((w) => w.name === echoViaMesh)!, all.find((w) => w.name === full)!);
      const ceilings = [...results.values()].map((r) => r.ceiling);
      const points = [...results.values()].flatMap((r) => r.points);
      await plot(points, join(ROOT, "bench", "results", "e2e.svg"));
      writeFileSync(join(ROOT, "bench", "results", "e2e.md"), table(ceilings, points, bracketed.runs));
      const get = (name: string) => results.get(name)!;
      const at = (name: string, fraction: number) => get(name).points[fractions.indexOf(fraction)]!;
      const belowSaturation = points.filter((p) => (p.offered_rps as number) <= 0.9 * get(p.workload as string).ceiling.qps);
      // The median for the default odd count of rounds; the upper middle one for an even count.
      const fullOverEcho = percentile([...bracketed.ratios].sort((a, b) => a - b), 50);
      console.log(`full Predict / echo via the mesh, bracketed ceilings: ${bracketed.ratios.map((r) => r.toFixed(3)).join(", ")} (median ${fullOverEcho.toFixed(3)})`);
      return {
        scenarios: [...ceilings, ...points, ...bracketed.runs],
        ratios: [
          ratio("cached Predict / echo, same edge + sidecar path (QPS)", get("cached Predict (Zipf 1.1)").ceiling.qps / get(echoViaMesh).ceiling.qps, ">= 0.5", get("cached Predict (Zipf 1.1)").ceiling.qps / get(echoViaMesh).ceiling.qps >= 0.5),
          ratio(`full Predict / echo, same edge + sidecar path (QPS, median of ${bracketedRounds} bracketed ceilings)`, fullOverEcho, ">= 0.3", fullOverEcho >= 0.3),
          ratio("full Predict / echo, same edge + sidecar path (QPS, the sweeps' single ceilings)", get(full).ceiling.qps / get(echoViaMesh).ceiling.qps, "informational", true),
          ratio("full / cached Predict (QPS)", get(full).ceiling.qps / get("cached Predict (Zipf 1.1)").ceiling.qps, "informational", true),
          ratio("echo via mesh / direct (QPS)", get(echoViaMesh).ceiling.qps / get("echo direct").ceiling.qps, "informational", true),
          ratio("full Predict p99 / p50 at 50% of max rate", at(full, 0.5).p99_ms / at(full, 0.5).p50_ms, "<= 4", at(full, 0.5).p99_ms / at(full, 0.5).p50_ms <= 4),
          ratio("errors below saturation (<= 90% of max)", belowSaturation.reduce((s, p) => s + p.errors, 0), "0", belowSaturation.every((p) => p.errors === 0)),
        ],
      };
    } finally {
      await mesh.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  },
};
export default suite;
