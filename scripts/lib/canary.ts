// The canary controller (`npm run canary`, scripts/canary.ts): moves traffic from
// prediction-v1 to prediction-v2 through the edge's runtime weights, step by step,
// comparing like with like:
// - before any shift it warms v2 (the hottest users replayed to it with x-canary, so
//   its cache holds what v1's does) and runs the quality gate: the same requests to
//   v1 and v2, cache bypassed, top-10 overlap and score drift;
// - during each step it reads v2's share at the edge (calls, errors, and retries: a
//   call that failed on v2 and was answered by v1 on retry still counts against v2),
//   and both apps' /metrics: fallback share per cache level, and for the stages that
//   run only on a cache miss how often v2 is slower than v1's p90, misses with misses;
//   shadow pairs keep the quality gate running.
// A bound past a limit (a confidence bound, not a point estimate) rolls back at once;
// a step passes when it lasted its interval, has the minimum counts, and every figure
// is within its limit; a step that cannot decide by its deadline rolls back. An
// ejected or unhealthy v2 gets no weight. Every step's figures, decision and reason go
// into a JSON report and a printed table.
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { countersSince, differenceInterval, meanInterval, missStages, readAppCounters, slowerShare, wilson, type AppCounters } from "./canary-stats.js";
import { CanaryProbe, shadowSample, type ShadowPair } from "./canary-shadow.js";
import { usersByActivity } from "./canary-traffic.js";
import { setRuntime, stats } from "./envoy-admin.js";
import type { Mesh } from "./mesh.js";

export interface CanaryGates {
  /** Highest v2 failure rate at the edge (errors plus calls retried on v1). */
  maxErrorRate: number;
  /** Highest v2 fallback share minus v1's, per cache level. */
  maxFallbackIncrease: number;
  /** Highest v2 share of slow miss-stage calls minus v1's (slow: past v1's slowQuantile). */
  maxSlowIncrease: number;
  slowQuantile: number;
  /** Lowest mean top-10 Jaccard overlap of v2's rankings with v1's on the same requests. */
  minOverlap: number;
  /** Highest mean |score difference| of the items both rankings hold. */
  maxScoreDrift: number;
  /** Width of the bounds that roll back during a step (checked every poll, so wide). */
  zStop: number;
  /** Width of the bounds of the quality gate (one decision per step). */
  zQuality: number;
  /** v2 calls at the edge per step. */
  minRequests: number;
  /** Calls per version for a cache level's or a miss stage's comparison to pass a step. */
  minCompared: number;
  /** Calls per version for such a comparison, or v2 calls for the failure rate, to stop a step (the zStop bounds guard the small count). */
  minToStop: number;
  /** Shadow pairs per step (and before the first). */
  minPairs: number;
}

export const defaultGates: CanaryGates = {
  maxErrorRate: 0.01,
  maxFallbackIncrease: 0.05,
  maxSlowIncrease: 0.25,
  slowQuantile: 0.9,
  // A random ranking overlaps v1's top 10 by about 0.05; the same model, under load, by
  // 0.3 to 1 (each app's item features are cached and refreshed on its own schedule).
  minOverlap: 0.3,
  maxScoreDrift: 0.05,
  zStop: 3,
  zQuality: 1.96,
  minRequests: 100,
  minCompared: 30,
  minToStop: 10,
  minPairs: 20,
};

export interface CanaryOptions {
  /** The edge (host:port), for the warm-up and shadow calls. */
  edge: string;
  edgeAdmin: string;
  /** Bearer token for the canary's own calls. */
  token: string;
  metricsUrls: { v1: string; v2: string };
  steps: number[];
  /** Shortest step. */
  intervalMs: number;
  /** Longest step: one that has not decided by then rolls back (default 4 x intervalMs). */
  maxStepMs?: number;
  pollMs?: number;
  gates?: Partial<CanaryGates>;
  /** Replayed to v2 before any shift (default: the 300 most active users). */
  warmUsers?: string[];
  /** Users for shadow pairs (default: 200 spread over the activity list). */
  shadowUsers?: string[];
  /** Shadow pairs in flight at once, and at most this many a second (default 2 and 5). */
  shadowConcurrency?: number;
  shadowPairsPerSecond?: number;
  /**
   * Share of v1's live calls the edge mirrors to v2 during the gate step (0: none).
   * Their comparison is reported, not gated on: the mirrored share follows live
   * traffic, so the paired calls above stay the quality gate's evidence.
   */
  mirrorPercent?: number;
  /** The JSON report goes here (directories created). */
  reportFile?: string;
  log?: (line: string) => void;
  /** Called right after each step's weight is set (drills inject faults here). */
  onStep?: (weight: number) => void | Promise<void>;
}

export interface Interval {
  value: number;
  low: number;
  high: number;
}

export interface StepFigures {
  edge: { requests: number; errors: number; retries: number; failureRate: Interval } | null;
  /** Per cache level: each version's answers and fallbacks, and v2's fallback share minus v1's. */
  cacheLevels: Record<string, { v1: { n: number; fallback: number }; v2: { n: number; fallback: number }; increase: Interval }>;
  /** Per miss stage: v1's p90 bound, each version's calls and slow calls, and v2's slow share minus v1's. */
  missLatency: Record<string, { thresholdMs: number; v1: { n: number; slow: number }; v2: { n: number; slow: number }; increase: Interval }>;
  shadow: { pairs: number; skipped: number; lastSkip: string; overlap: Interval | null; rbo: number | null; drift: Interval | null };
  /** The edge's mirrored traffic (shadow_percent), compared by the apps: pairs and mean figures. */
  mirrored: { pairs: number; fallback: number; overlap: number | null; rbo: number | null; drift: number | null };
}

export interface StepReport {
  /** 0 for the gate before any shift. */
  weight: number;
  /** Since the run began, ms. */
  startedMs: number;
  durationMs: number;
  decision: "pass" | "rollback" | "refuse";
  reason: string;
  figures: StepFigures;
}

export interface CanaryReport {
  outcome: "promoted" | "rolled_back" | "refused" | "not_ready";
  reason: string;
  startedAt: string;
  gates: CanaryGates;
  warm: { calls: number; answeredByV2: number } | null;
  steps: StepReport[];
}

const predict = "grpc.recsys.prediction.v1.PredictionService.Predict";
/** gRPC codes that are the server's fault (bad input and shedding are not). */
const serverErrorCodes = [2, 4, 13, 14, 15];

async function setWeight(edgeAdmin: string, v2: number) {
  await setRuntime(edgeAdmin, { "routing.prediction.prediction-v1": 100 - v2, "routing.prediction.prediction-v2": v2 });
}

/** v2's share at the edge (the prediction-v2-first failover cluster) and the ejections of v2 hosts. */
async function edgeCounts(edgeAdmin: string) {
  const cluster = "cluster.prediction-v2-first";
  const s = await stats(edgeAdmin, `^(${cluster.replace(/\./g, "\\.")}\\.(${predict.replace(/\./g, "\\.")}\\.|upstream_rq_retry$)|cluster\\.prediction-v2\\.outlier_detection\\.ejections_enforced_total$)`);
  const get = (k: string | number) => s.get(`${cluster}.${predict}.${k}`) ?? 0;
  return {
    total: get("total"),
    errors: serverErrorCodes.reduce((sum, code) => sum + get(code), 0),
    retries: s.get(`${cluster}.upstream_rq_retry`) ?? 0,
    ejections: s.get("cluster.prediction-v2.outlier_detection.ejections_enforced_total") ?? 0,
  };
}

/** Why the edge would not send v2 anything now, or "" when it has a healthy, non-ejected v2 host. */
export async function v2Unavailable(edgeAdmin: string): Promise<string> {
  const s = await stats(edgeAdmin, "^cluster\\.prediction-v2\\.(membership_healthy|outlier_detection\\.ejections_active)$");
  const healthy = s.get("cluster.prediction-v2.membership_healthy") ?? 0;
  const ejected = s.get("cluster.prediction-v2.outlier_detection.ejections_active") ?? 0;
  // membership_healthy already leaves out ejected hosts.
  if (healthy > 0) return "";
  return ejected > 0 ? "outlier detection ejected every prediction-v2 host" : "the edge sees no healthy prediction-v2 instance";
}

/** Where the canary reads and calls on a mesh that scripts/lib/mesh.ts started. */
export function meshTarget(mesh: Mesh, token: string): Pick<CanaryOptions, "edge" | "edgeAdmin" | "token" | "metricsUrls"> {
  const metrics = (v: string) => `http://127.0.0.1:${mesh.instances.find((i) => i.id === `prediction-${v}`)!.metricsPort}/metrics`;
  return { edge: mesh.edge, edgeAdmin: mesh.edgeAdmin, token, metricsUrls: { v1: metrics("v1"), v2: metrics("v2") } };
}

export const v2Healthy = async (edgeAdmin: string) => (await v2Unavailable(edgeAdmin)) === "";

const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
const interval = (value: number, low: number, high: number): Interval => ({ value, low, high });

/** The step's figures from what the edge and the apps counted since it began, and its shadow pairs. */
function figures(
  edge: { total: number; errors: number; retries: number } | null,
  apps: { v1: AppCounters; v2: AppCounters },
  pairs: ShadowPair[],
  skips: string[],
  g: CanaryGates,
): StepFigures {
  const out: StepFigures = { edge: null, cacheLevels: {}, missLatency: {}, shadow: { pairs: pairs.length, skipped: skips.length, lastSkip: skips.at(-1) ?? "", overlap: null, rbo: null, drift: null },
    mirrored: { pairs: 0, fallback: 0, overlap: null, rbo: null, drift: null },
  };
  if (edge) {
    const failed = edge.errors + edge.retries;
    const bound = wilson(Math.min(failed, edge.total), edge.total, g.zStop);
    out.edge = { requests: edge.total, errors: edge.errors, retries: edge.retries, failureRate: interval(edge.total ? failed / edge.total : 0, bound.low, bound.high) };
  }
  for (const level of new Set([...Object.keys(apps.v1.answers), ...Object.keys(apps.v2.answers)])) {
    const side = (c: AppCounters) => {
      const rungs = c.answers[level] ?? {};
      const n = Object.values(rungs).reduce((s, v) => s + v, 0);
      return { n, fallback: n - (rungs.primary ?? 0) };
    };
    const [v1, v2] = [side(apps.v1), side(apps.v2)];
    const d = differenceInterval(v2.fallback, v2.n, v1.fallback, v1.n, g.zStop);
    out.cacheLevels[level] = { v1, v2, increase: interval(d.diff, d.low, d.high) };
  }
  for (const stage of missStages) {
    const slow = slowerShare(apps.v1.stages[stage], apps.v2.stages[stage], g.slowQuantile);
    if (!slow) continue;
    const d = differenceInterval(slow.slow2, slow.n2, slow.slow1, slow.n1, g.zStop);
    out.missLatency[stage] = { thresholdMs: slow.thresholdMs, v1: { n: slow.n1, slow: slow.slow1 }, v2: { n: slow.n2, slow: slow.slow2 }, increase: interval(d.diff, d.low, d.high) };
  }
  const m = [apps.v1.mirrored, apps.v2.mirrored].reduce((a, b) => Object.fromEntries(Object.entries(a).map(([k, v]) => [k, v + b[k as keyof typeof b]])) as typeof a);
  out.mirrored = {
    pairs: m.compared,
    fallback: m.fallback,
    overlap: m.compared > 0 ? m.overlapSum / m.compared : null,
    rbo: m.compared > 0 ? m.rboSum / m.compared : null,
    drift: m.driftCount > 0 ? m.driftSum / m.driftCount : null,
  };
  if (pairs.length > 0) {
    const overlap = meanInterval(pairs.map((p) => p.overlap), g.zQuality);
    out.shadow.overlap = interval(overlap.mean, overlap.low, overlap.high);
    out.shadow.rbo = pairs.reduce((s, p) => s + p.rbo, 0) / pairs.length;
    const drifts = pairs.flatMap((p) => (p.drift === null ? [] : [p.drift]));
    if (drifts.length > 0) {
      const drift = meanInterval(drifts, g.zQuality);
      out.shadow.drift = interval(drift.mean, drift.low, drift.high);
    }
  }
  return out;
}

/** A bound past a limit: evidence that v2 is worse, so the step stops now. */
function breach(f: StepFigures, g: CanaryGates): string {
  if (f.edge && f.edge.requests >= g.minToStop && f.edge.failureRate.low > g.maxErrorRate) {
    return `v2 failed ${f.edge.errors + f.edge.retries} of ${f.edge.requests} calls (${f.edge.retries} retried on v1): failure rate >= ${pct(f.edge.failureRate.low)} > ${pct(g.maxErrorRate)}`;
  }
  for (const [level, c] of Object.entries(f.cacheLevels)) {
    if (Math.min(c.v1.n, c.v2.n) >= g.minToStop && c.increase.low > g.maxFallbackIncrease) {
      return `cache ${level}: v2 fell back on ${c.v2.fallback}/${c.v2.n}, v1 on ${c.v1.fallback}/${c.v1.n}: +${pct(c.increase.low)} or more > ${pct(g.maxFallbackIncrease)}`;
    }
  }
  for (const [stage, s] of Object.entries(f.missLatency)) {
    if (Math.min(s.v1.n, s.v2.n) >= g.minToStop && s.increase.low > g.maxSlowIncrease) {
      return `misses: stage ${stage} past v1's p${g.slowQuantile * 100} (${s.thresholdMs} ms) on ${s.v2.slow}/${s.v2.n} v2 calls, ${s.v1.slow}/${s.v1.n} v1 calls: +${pct(s.increase.low)} or more > ${pct(g.maxSlowIncrease)}`;
    }
  }
  const { overlap, drift } = f.shadow;
  if (overlap && f.shadow.pairs >= g.minPairs && overlap.high < g.minOverlap) return `rankings differ: top-10 overlap ${overlap.value.toFixed(2)} (<= ${overlap.high.toFixed(2)}) < ${g.minOverlap} over ${f.shadow.pairs} shadow pairs`;
  if (drift && f.shadow.pairs >= g.minPairs && drift.low > g.maxScoreDrift) return `scores drift: mean |v2 - v1| ${drift.value.toFixed(3)} (>= ${drift.low.toFixed(3)}) > ${g.maxScoreDrift} over ${f.shadow.pairs} shadow pairs`;
  return "";
}

/** What is still missing before the step may pass ("" when it may). */
function pending(f: StepFigures, g: CanaryGates, withTraffic: boolean): string {
  if (withTraffic && (f.edge?.requests ?? 0) < g.minRequests) return `${f.edge?.requests ?? 0} v2 calls at the edge (need ${g.minRequests})`;
  if (f.edge && f.edge.failureRate.value > g.maxErrorRate) return `failure rate ${pct(f.edge.failureRate.value)} > ${pct(g.maxErrorRate)}`;
  const misses = f.cacheLevels.miss;
  if (!misses || Math.min(misses.v1.n, misses.v2.n) < g.minCompared) return `${misses ? Math.min(misses.v1.n, misses.v2.n) : 0} cache misses compared (need ${g.minCompared} per version)`;
  for (const [level, c] of Object.entries(f.cacheLevels)) {
    if (Math.min(c.v1.n, c.v2.n) >= g.minCompared && c.increase.value > g.maxFallbackIncrease) return `cache ${level}: fallback +${pct(c.increase.value)} > ${pct(g.maxFallbackIncrease)}`;
  }
  for (const [stage, s] of Object.entries(f.missLatency)) {
    if (Math.min(s.v1.n, s.v2.n) >= g.minCompared && s.increase.value > g.maxSlowIncrease) return `stage ${stage}: slow share +${pct(s.increase.value)} > ${pct(g.maxSlowIncrease)}`;
  }
  const { overlap, drift, pairs } = f.shadow;
  if (pairs < g.minPairs) return `${pairs} shadow pairs (need ${g.minPairs}; last skipped: ${f.shadow.lastSkip || "none"})`;
  if (!overlap || overlap.low < g.minOverlap) return `top-10 overlap ${overlap?.value.toFixed(2)} not shown >= ${g.minOverlap} (lower bound ${overlap?.low.toFixed(2)})`;
  if (drift && drift.high > g.maxScoreDrift) return `score drift ${drift.value.toFixed(3)} not shown <= ${g.maxScoreDrift} (upper bound ${drift.high.toFixed(3)})`;
  return "";
}

/**
 * One phase: the gate before any shift (weight 0) or a step. Shadow pairs run in the
 * background while the loop reads the edge and the apps every pollMs.
 */
async function runPhase(o: CanaryOptions, g: CanaryGates, weight: number, probe: CanaryProbe, shadowUsers: string[], runStarted: number): Promise<StepReport> {
  const pollMs = o.pollMs ?? 200;
  const minMs = weight === 0 ? 0 : o.intervalMs;
  const maxMs = Math.max(minMs, o.maxStepMs ?? 4 * o.intervalMs, 10_000);
  const [edgeBefore, v1Before, v2Before] = await Promise.all([edgeCounts(o.edgeAdmin), readAppCounters(o.metricsUrls.v1), readAppCounters(o.metricsUrls.v2)]);
  const started = Date.now();
  if (weight > 0) {
    await setWeight(o.edgeAdmin, weight);
    o.log?.(`canary: prediction-v2 at ${weight}%`);
    await o.onStep?.(weight);
  }
  const pairs: ShadowPair[] = [];
  const skips: string[] = [];
  let running = true;
  let nextUser = 0;
  // Paced: each pair is two full computations, on top of the callers' traffic.
  const concurrency = o.shadowConcurrency ?? 2;
  const spacingMs = (1000 * concurrency) / (o.shadowPairsPerSecond ?? 5);
  const shadow = Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (running) {
        const began = Date.now();
        const result = await probe.pair(shadowUsers[nextUser++ % shadowUsers.length]!);
        if ("skipped" in result) skips.push(result.skipped);
        else pairs.push(result);
        await new Promise((r) => setTimeout(r, Math.max(0, spacingMs - (Date.now() - began))));
      }
    }),
  );
  let decision: StepReport["decision"] = "pass";
  let reason = "";
  let f: StepFigures | undefined;
  try {
    for (;;) {
      await new Promise((r) => setTimeout(r, pollMs));
      const evidence = await Promise.all([v2Unavailable(o.edgeAdmin), edgeCounts(o.edgeAdmin), readAppCounters(o.metricsUrls.v1), readAppCounters(o.metricsUrls.v2)]).catch((err: Error) => err);
      if (evidence instanceof Error) {
        // Without the edge's or the apps' figures nothing can be judged: v2 gets no weight.
        reason = `cannot read the evidence: ${evidence.message}`;
        decision = weight === 0 ? "refuse" : "rollback";
        if (weight > 0) await setWeight(o.edgeAdmin, 0);
        break;
      }
      const [unavailable, edgeNow, v1Now, v2Now] = evidence;
      const edge = { total: edgeNow.total - edgeBefore.total, errors: edgeNow.errors - edgeBefore.errors, retries: edgeNow.retries - edgeBefore.retries };
      f = figures(edge, { v1: countersSince(v1Now, v1Before), v2: countersSince(v2Now, v2Before) }, [...pairs], [...skips], g);
      const elapsed = Date.now() - started;
      if (unavailable || edgeNow.ejections > edgeBefore.ejections) {
        reason = unavailable || "outlier detection ejected a prediction-v2 host";
      } else {
        reason = breach(f, g);
        if (!reason) {
          const missing = pending(f, g, weight > 0);
          if (elapsed >= minMs && !missing) break;
          if (elapsed >= maxMs) reason = `no decision after ${Math.round(elapsed / 1000)} s: ${missing}`;
        }
      }
      if (reason) {
        decision = weight === 0 ? "refuse" : "rollback";
        if (weight > 0) await setWeight(o.edgeAdmin, 0);
        break;
      }
    }
  } finally {
    running = false;
  }
  const durationMs = Date.now() - started;
  await shadow;
  const none = (): AppCounters => ({ answers: {}, stages: {}, mirrored: { compared: 0, fallback: 0, overlapSum: 0, rboSum: 0, driftSum: 0, driftCount: 0 } });
  f ??= figures(null, { v1: none(), v2: none() }, pairs, skips, g);
  return { weight, startedMs: started - runStarted, durationMs, decision, reason: reason || "every figure within its limit", figures: f };
}

export async function runCanary(o: CanaryOptions): Promise<CanaryReport> {
  const log = o.log ?? ((line: string) => console.log(line));
  const g: CanaryGates = { ...defaultGates, ...o.gates };
  const runStarted = Date.now();
  const report: CanaryReport = { outcome: "promoted", reason: "", startedAt: new Date(runStarted).toISOString(), gates: g, warm: null, steps: [] };
  const finish = (outcome: CanaryReport["outcome"], reason: string) => {
    report.outcome = outcome;
    report.reason = reason;
    if (o.reportFile) {
      mkdirSync(dirname(o.reportFile), { recursive: true });
      writeFileSync(o.reportFile, JSON.stringify(report, null, 2) + "\n");
    }
    return report;
  };
  const unavailable = await v2Unavailable(o.edgeAdmin);
  if (unavailable) {
    await setWeight(o.edgeAdmin, 0);
    return finish("not_ready", unavailable);
  }
  const users = usersByActivity();
  const probe = new CanaryProbe(o.edge, o.token);
  report.warm = await probe.warm(o.warmUsers ?? users.slice(0, 300), 8);
  log(`canary: warmed v2 with ${report.warm.calls} replayed calls (${report.warm.answeredByV2} answered by v2)`);
  const shadowUsers = o.shadowUsers ?? shadowSample(users, 200);
  const mirror = (percent: number) => setRuntime(o.edgeAdmin, { "routing.prediction.shadow_percent": percent });
  if (o.mirrorPercent) await mirror(o.mirrorPercent);
  const gate = await runPhase(o, g, 0, probe, shadowUsers, runStarted).finally(() => (o.mirrorPercent ? mirror(0) : undefined));
  report.steps.push(gate);
  if (gate.decision !== "pass") {
    log(`canary: refused before any shift: ${gate.reason}`);
    return finish("refused", gate.reason);
  }
  log(`canary: quality gate passed (${gate.figures.shadow.pairs} shadow pairs, overlap ${gate.figures.shadow.overlap?.value.toFixed(2)})`);
  for (const weight of o.steps) {
    const step = await runPhase(o, g, weight, probe, shadowUsers, runStarted);
    report.steps.push(step);
    if (step.decision !== "pass") {
      log(`canary: rolled back at ${weight}% after ${step.durationMs} ms: ${step.reason}`);
      return finish("rolled_back", step.reason);
    }
    log(`canary: ${weight}% passed after ${step.durationMs} ms`);
  }
  await setWeight(o.edgeAdmin, 100);
  log("canary: promoted prediction-v2 to 100%");
  return finish("promoted", "every step within its limits");
}

const num = (x: number | null | undefined, digits = 2) => (x === null || x === undefined || !Number.isFinite(x) ? "-" : x.toFixed(digits));

/** The report as a Markdown table: one row per phase, the figures that decided it. */
export function formatReport(r: CanaryReport): string {
  const rows = r.steps.map((s) => {
    const f = s.figures;
    const miss = f.cacheLevels.miss;
    const worstStage = Object.entries(f.missLatency).sort((a, b) => b[1].increase.value - a[1].increase.value)[0];
    return [
      s.weight === 0 ? "gate (0%)" : `${s.weight}%`,
      `${(s.startedMs / 1000).toFixed(1)} s`,
      `${(s.durationMs / 1000).toFixed(1)} s`,
      f.edge ? `${f.edge.requests}` : "-",
      f.edge ? `${pct(f.edge.failureRate.value)} [${pct(f.edge.failureRate.low)}, ${pct(f.edge.failureRate.high)}] (${f.edge.retries} retried)` : "-",
      Object.entries(f.cacheLevels)
        .map(([level, c]) => `${level} ${c.v2.n}/${c.v1.n}`)
        .join(", "),
      miss ? `${pct(miss.increase.value)} [${pct(miss.increase.low)}, ${pct(miss.increase.high)}]` : "-",
      worstStage ? `${worstStage[0]} ${pct(worstStage[1].increase.value)} [${pct(worstStage[1].increase.low)}, ${pct(worstStage[1].increase.high)}]` : "-",
      `${num(f.shadow.overlap?.value)} [${num(f.shadow.overlap?.low)}] / ${f.shadow.pairs}`,
      num(f.shadow.drift?.value, 3),
      f.mirrored.pairs + f.mirrored.fallback > 0 ? `${num(f.mirrored.overlap)} / ${num(f.mirrored.rbo)} / ${num(f.mirrored.drift, 3)} (${f.mirrored.pairs})` : "-",
      s.decision,
      s.reason.replace(/\|/g, "/"),
    ];
  });
  const header = ["step", "at", "took", "v2 calls", "v2 failed [99.7% bounds]", "answers v2/v1 by cache", "miss fallback Δ", "slowest miss stage Δ (share past v1 p90)", "overlap [low] / pairs", "drift", "mirrored overlap / RBO / drift (pairs)", "decision", "why"];
  const line = (cells: string[]) => `| ${cells.join(" | ")} |`;
  return [line(header), line(header.map(() => "---")), ...rows.map(line), "", `outcome: ${r.outcome}: ${r.reason}`].join("\n");
}
