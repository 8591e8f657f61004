// `npm run canary -- [--steps 10,25,50] [--interval-s 10] ...`: ramps traffic from
// prediction-v1 to prediction-v2 through the edge's runtime weights, step by step.
// After each step it compares v2 with v1 over that step: gRPC error rate and p99
// from the edge's own stats, and the fallback rate from each version's /metrics.
// The edge routes each version's share to an aggregate cluster that fails over to
// the other version (prediction-v2-first: v2, then v1), so a failing v2 can hide
// behind retries answered by v1: retries on v2's share count as its errors, and an
// outlier ejection of a v2 host is a breach. Any breach rolls back at once (v2
// weight 0); passing every step promotes v2 to 100%. It never shifts traffic to v2
// while the edge sees no healthy v2 instance.
import { parseArgs } from "node:util";
import { pathToFileURL } from "node:url";
import { localPorts } from "../envoy/topology.js";
import { histogram, setRuntime, stats } from "./envoy-admin.js";

export interface CanaryOptions {
  edgeAdmin: string;
  steps: number[];
  intervalMs: number;
  /** Highest acceptable v2 gRPC error rate in a step (0..1). */
  maxErrorRate: number;
  /** Highest acceptable v2 p99 / v1 p99. */
  maxLatencyRatio: number;
  /** Highest acceptable v2 fallback rate minus v1's, in a step. */
  maxFallbackIncrease: number;
  /** Minimum v2 requests in a step for its figures to count. */
  minRequests: number;
  /**
   * A step with fewer than minRequests v2 requests after intervalMs waits for them
   * up to this long (default intervalMs), then rolls back for lack of evidence.
   */
  maxStepMs?: number;
  metricsUrls: { v1: string; v2: string };
  log?: (line: string) => void;
}

export interface CanaryResult {
  outcome: "promoted" | "rolled_back" | "not_ready";
  reason: string;
  steps: { weight: number; errorRate: number; retries: number; p99Ratio: number | null; fallbackIncrease: number; requests: number }[];
}

const predict = "grpc.recsys.prediction.v1.PredictionService.Predict";

async function setWeight(edgeAdmin: string, v2: number) {
  await setRuntime(edgeAdmin, { "routing.prediction.prediction-v1": 100 - v2, "routing.prediction.prediction-v2": v2 });
}

/** gRPC codes that are the server's fault (bad input and shedding are not). */
const serverErrorCodes = [2, 4, 13, 14, 15];

/** The edge's cluster for a version's share of the traffic: that version first, then the other. */
const shareCluster = (v: string) => `prediction-${v}-first`;

/**
 * Predict calls and server errors per version's share, from the edge's grpc_stats
 * counters; and for v2's share the retries (each one a v2 failure v1 may have
 * answered) and the ejections of v2 hosts.
 */
async function grpcCounts(edgeAdmin: string) {
  const s = await stats(edgeAdmin, `^cluster\\.(prediction-v[12]-first\\.(${predict.replace(/\./g, "\\.")}\\.|upstream_rq_retry$)|prediction-v2\\.outlier_detection\\.ejections_enforced_total$)`);
  const get = (v: string, k: string | number) => s.get(`cluster.${shareCluster(v)}.${predict}.${k}`) ?? 0;
  const side = (v: string) => ({ total: get(v, "total"), errors: serverErrorCodes.reduce((sum, code) => sum + get(v, code), 0) });
  return {
    v1: side("v1"),
    v2: { ...side("v2"), retries: s.get(`cluster.${shareCluster("v2")}.upstream_rq_retry`) ?? 0, ejections: s.get("cluster.prediction-v2.outlier_detection.ejections_enforced_total") ?? 0 },
  };
}

/** Predictions answered below the primary rung, and all predictions, from /metrics. */
async function fallbackCounts(url: string): Promise<{ fallback: number; total: number }> {
  const text = await fetch(url).then((r) => r.text(), () => "");
  let fallback = 0;
  let total = 0;
  for (const line of text.split("\n")) {
    const match = /^recsys_prediction_answers_total\{([^}]*)\} (\S+)$/.exec(line);
    if (!match) continue;
    const value = Number(match[2]);
    total += value;
    if (!/rung="primary"/.test(match[1]!)) fallback += value;
  }
  return { fallback, total };
}

/** True when the edge has a v2 instance that passes health checks and is not ejected. */
export async function v2Healthy(edgeAdmin: string): Promise<boolean> {
  const s = await stats(edgeAdmin, "^cluster\\.prediction-v2\\.(membership_healthy|outlier_detection\\.ejections_active)$");
  const healthy = s.get("cluster.prediction-v2.membership_healthy") ?? 0;
  const ejected = s.get("cluster.prediction-v2.outlier_detection.ejections_active") ?? 0;
  return healthy - ejected > 0;
}

export async function runCanary(o: CanaryOptions): Promise<CanaryResult> {
  const log = o.log ?? ((line: string) => console.log(line));
  const result: CanaryResult = { outcome: "promoted", reason: "", steps: [] };
  if (!(await v2Healthy(o.edgeAdmin))) {
    await setWeight(o.edgeAdmin, 0);
    return { ...result, outcome: "not_ready", reason: "the edge sees no healthy prediction-v2 instance" };
  }
  for (const weight of o.steps) {
    const before = await grpcCounts(o.edgeAdmin);
    const fbBefore = { v1: await fallbackCounts(o.metricsUrls.v1), v2: await fallbackCounts(o.metricsUrls.v2) };
    await setWeight(o.edgeAdmin, weight);
    log(`canary: prediction-v2 at ${weight}%`);
    const started = Date.now();
    const until = started + o.intervalMs;
    const giveUp = started + Math.max(o.intervalMs, o.maxStepMs ?? o.intervalMs);
    let breach = "";
    let step = { weight, errorRate: 0, retries: 0, p99Ratio: null as number | null, fallbackIncrease: 0, requests: 0 };
    // Check every second so a breach rolls back within a second, not at the step's end.
    while (!breach && (Date.now() < until || (step.requests < o.minRequests && Date.now() < giveUp))) {
      await new Promise((r) => setTimeout(r, Math.min(1000, Math.max(0, (Date.now() < until ? until : giveUp) - Date.now()))));
      if (!(await v2Healthy(o.edgeAdmin))) {
        breach = "prediction-v2 has no healthy instance";
        break;
      }
      const now = await grpcCounts(o.edgeAdmin);
      if (now.v2.ejections > before.v2.ejections) {
        breach = "outlier detection ejected a prediction-v2 host";
        break;
      }
      const v2Total = now.v2.total - before.v2.total;
      const retries = now.v2.retries - before.v2.retries;
      const v2Failed = now.v2.errors - before.v2.errors + retries;
      const fb = { v1: await fallbackCounts(o.metricsUrls.v1), v2: await fallbackCounts(o.metricsUrls.v2) };
      const rate = (side: "v1" | "v2") => {
        const total = fb[side].total - fbBefore[side].total;
        return total > 0 ? (fb[side].fallback - fbBefore[side].fallback) / total : 0;
      };
      const [p1, p2] = [await histogram(o.edgeAdmin, `cluster.${shareCluster("v1")}.upstream_rq_time`), await histogram(o.edgeAdmin, `cluster.${shareCluster("v2")}.upstream_rq_time`)];
      const p99Ratio = p1.p99 && p2.p99 ? p2.p99 / p1.p99 : null;
      step = { weight, errorRate: v2Total > 0 ? v2Failed / v2Total : 0, retries, p99Ratio, fallbackIncrease: rate("v2") - rate("v1"), requests: v2Total };
      if (v2Total < o.minRequests) continue;
      if (step.errorRate > o.maxErrorRate) breach = `error rate ${(step.errorRate * 100).toFixed(2)}% > ${(o.maxErrorRate * 100).toFixed(2)}% (${retries} failures retried on v1)`;
      else if (p99Ratio !== null && p99Ratio > o.maxLatencyRatio) breach = `p99 ${p99Ratio.toFixed(2)}x v1 > ${o.maxLatencyRatio}x`;
      else if (step.fallbackIncrease > o.maxFallbackIncrease) breach = `fallback rate +${(step.fallbackIncrease * 100).toFixed(1)} points over v1`;
    }
    result.steps.push(step);
    if (!breach && step.requests < o.minRequests) breach = `only ${step.requests} requests reached v2 at ${weight}% (need ${o.minRequests})`;
    if (breach) {
      await setWeight(o.edgeAdmin, 0);
      log(`canary: rolled back at ${weight}%: ${breach}`);
      return { ...result, outcome: "rolled_back", reason: breach };
    }
    log(`canary: ${weight}% healthy (${step.requests} requests, error rate ${(step.errorRate * 100).toFixed(2)}%, p99 ratio ${step.p99Ratio?.toFixed(2) ?? "n/a"})`);
  }
  await setWeight(o.edgeAdmin, 100);
  log("canary: promoted prediction-v2 to 100%");
  return { ...result, reason: "every step within bounds" };
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const { values } = parseArgs({
    options: {
      "edge-admin": { type: "string", default: `http://127.0.0.1:${localPorts.edgeAdmin}` },
      steps: { type: "string", default: "10,25,50" },
      "interval-s": { type: "string", default: "30" },
      "max-error-rate": { type: "string", default: "0.01" },
      "max-latency-ratio": { type: "string", default: "1.5" },
      "max-fallback-increase": { type: "string", default: "0.05" },
      "min-requests": { type: "string", default: "50" },
      "max-step-s": { type: "string" },
    },
  });
  const metrics = (v: string) => `http://127.0.0.1:${localPorts.appMetrics("prediction", v)}/metrics`;
  const result = await runCanary({
    edgeAdmin: values["edge-admin"]!,
    steps: values.steps!.split(",").map(Number),
    intervalMs: Number(values["interval-s"]) * 1000,
    maxErrorRate: Number(values["max-error-rate"]),
    maxLatencyRatio: Number(values["max-latency-ratio"]),
    maxFallbackIncrease: Number(values["max-fallback-increase"]),
    minRequests: Number(values["min-requests"]),
    ...(values["max-step-s"] ? { maxStepMs: Number(values["max-step-s"]) * 1000 } : {}),
    metricsUrls: { v1: metrics("v1"), v2: metrics("v2") },
  });
  console.log(JSON.stringify(result, null, 2));
  process.exit(result.outcome === "promoted" ? 0 : 1);
}
