// Shadow traffic on the real mesh: with routing.prediction.shadow_percent at 100, every
// Predict the edge sends to v1 is mirrored to v2, and the two answers are compared
// (services/prediction/shadow.ts): the pairs, their top-10 overlap, rank-biased overlap
// and score drift are on the apps' /metrics. Callers only ever get v1's answers, and a
// shadow that fails every call or answers after 10 s changes nothing for them.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { PredictionService } from "../../gen/recsys/prediction/v1/prediction_pb.js";
import { localPorts } from "../../envoy/topology.js";
import { appCounters, series } from "../../scripts/lib/canary-stats.js";
import { setRuntime, stat } from "../../scripts/lib/envoy-admin.js";
import { startMesh, type Mesh } from "../../scripts/lib/mesh.js";
import { edgeClient, edgeTokenMinter } from "../support/tokens.js";

let mesh: Mesh;
let token: string;
const runDir = mkdtempSync(join(tmpdir(), "recsys-shadow-test-"));
const edgeAdmin = `http://127.0.0.1:${localPorts.edgeAdmin}`;
const v2Sidecar = `http://127.0.0.1:${localPorts.sidecarAdmin("prediction", "v2")}`;

beforeAll(async () => {
  mesh = await startMesh({ runDir, env: { LOG_LEVEL: "warn" } });
  token = (await edgeTokenMinter())("shadow-test");
  await setRuntime(edgeAdmin, { "routing.prediction.shadow_percent": 100 });
}, 300_000);
afterAll(async () => {
  await mesh?.stop();
  rmSync(runDir, { recursive: true, force: true });
}, 120_000);

/** One scrape of each prediction app's /metrics: the figures in one scrape agree with each other. */
async function scrape(): Promise<string[]> {
  return Promise.all(["v1", "v2"].map(async (version) => (await fetch(`http://127.0.0.1:${localPorts.appMetrics("prediction", version)}/metrics`)).text()));
}

/** Sums one metric's samples over the apps' scrapes, where the labels match. */
function sumOf(texts: string[], metric: string, labels: Record<string, string> = {}): number {
  return texts
    .flatMap((text) => series(text, metric))
    .filter((sample) => Object.entries(labels).every(([k, v]) => sample.labels[k] === v))
    .reduce((sum, sample) => sum + sample.value, 0);
}

const total = async (metric: string, labels: Record<string, string> = {}) => sumOf(await scrape(), metric, labels);

/** n Predicts through the edge, 8 at a time: who answered each, and every error. */
async function calls(n: number, first: number): Promise<{ versions: string[]; errors: string[] }> {
  const client = edgeClient(PredictionService, mesh.edge, token);
  const versions: string[] = [];
  const errors: string[] = [];
  let next = 0;
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      while (next < n) {
        const userId = `u${String(first + next++).padStart(6, "0")}`;
        try {
          await client.predict({ userId, numPredictions: 10, bypassCache: true }, { timeoutMs: 5_000, onHeader: (h) => versions.push(h.get("x-service-version") ?? "none") });
        } catch (err) {
          errors.push(String(err));
        }
      }
    }),
  );
  return { versions, errors };
}

/** Polls until check returns a value, or fails with what it saw last. */
async function eventually<T>(what: string, check: () => Promise<T | undefined>, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    last = await check().catch((err: unknown) => err);
    if (last !== undefined && !(last instanceof Error)) return last as T;
    await new Promise((r) => setTimeout(r, 500));
  }
  throw new Error(`${what}: not within ${timeoutMs} ms (last: ${String(last)})`);
}

/**
 * Waits until `all` pairs have met, or at least `atLeast` have and the count did not grow
 * over one poll: a shadow can answer after its caller has v1's answer, and one that failed
 * never pairs.
 */
async function pairsSettled(atLeast: number, all = Infinity): Promise<void> {
  let last = -1;
  await eventually(
    `at least ${atLeast} pairs, no longer growing`,
    async () => {
      const met = await total("recsys_prediction_shadow_pairs_total");
      const settled = met >= all || (met >= atLeast && met === last);
      last = met;
      if (!settled) throw new Error(`${met} pairs met`);
      return met;
    },
    30_000,
  );
}

describe("shadow traffic", () => {
  it("compares v2's answer with v1's for every mirrored call, while callers get v1's", async () => {
    const n = 120;
    const { versions, errors } = await calls(n, 0);
    expect(errors).toEqual([]);
    expect(new Set(versions)).toEqual(new Set(["v1"]));
    // Both versions computed every call; only v1's answers left the mesh.
    await pairsSettled(n * 0.9, n);
    // Every figure from one scrape per app: a pair met between two scrapes would make them disagree.
    const texts = await scrape();
    const pairs = sumOf(texts, "recsys_prediction_shadow_pairs_total", { result: "compared" });
    expect(pairs).toBeGreaterThanOrEqual(n * 0.8);
    const labels = { primary_version: "v1", shadow_version: "v2" };
    expect(sumOf(texts, "recsys_prediction_shadow_overlap_count", labels)).toBe(pairs);
    expect(sumOf(texts, "recsys_prediction_shadow_rbo_count", labels)).toBe(pairs);
    const meanOverlap = sumOf(texts, "recsys_prediction_shadow_overlap_sum", labels) / pairs;
    const meanRbo = sumOf(texts, "recsys_prediction_shadow_rbo_sum", labels) / pairs;
    // The same models on both versions here: their top 10s mostly agree.
    expect(meanOverlap).toBeGreaterThan(0.5);
    expect(meanOverlap).toBeLessThanOrEqual(1);
    expect(meanRbo).toBeGreaterThan(0.5);
    expect(await stat(edgeAdmin, "cluster.prediction-v2.upstream_rq_total")).toBeGreaterThanOrEqual(n);
    // The canary controller reads the same figures into its report.
    const apps = texts.map(appCounters);
    expect(apps[0]!.mirrored.compared + apps[1]!.mirrored.compared).toBe(pairs);
    expect((apps[0]!.mirrored.overlapSum + apps[1]!.mirrored.overlapSum) / pairs).toBeCloseTo(meanOverlap, 9);
  }, 180_000);

  it("a shadow that fails every call or answers after 10 s does not touch the callers", async () => {
    /** n calls while v2's sidecar injects a fault: every caller answered by v1, and the fault really hit v2. */
    const callsUnderFault = async (fault: Record<string, number>, off: Record<string, number>, injected: string, n: number, first: number) => {
      const before = await stat(v2Sidecar, `http.ingress_prediction.fault.${injected}`);
      await setRuntime(v2Sidecar, fault);
      try {
        const { errors, versions } = await calls(n, first);
        expect(errors).toEqual([]);
        expect(new Set(versions)).toEqual(new Set(["v1"]));
        expect(await stat(v2Sidecar, `http.ingress_prediction.fault.${injected}`)).toBeGreaterThanOrEqual(before + n);
      } finally {
        await setRuntime(v2Sidecar, off);
      }
    };
    await pairsSettled(0);
    const comparedBefore = await total("recsys_prediction_shadow_pairs_total", { result: "compared" });
    await callsUnderFault({ "chaos.abort_percent": 100 }, { "chaos.abort_percent": 0 }, "aborts_injected", 60, 1000);
    // No pair met: v2 never answered.
    expect(await total("recsys_prediction_shadow_pairs_total", { result: "compared" })).toBe(comparedBefore);
    // Each call's deadline (5 s) is half the shadow's delay: a caller that waited for the shadow would fail.
    await callsUnderFault({ "chaos.delay_percent": 100, "chaos.delay_ms": 10_000 }, { "chaos.delay_percent": 0 }, "delays_injected", 40, 2000);
  }, 180_000);
});
