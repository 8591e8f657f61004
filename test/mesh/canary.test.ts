// The canary controller (scripts/canary.ts) on the whole mesh, as `npm start` runs it,
// under cached Predict traffic (Zipf 1.1 users, caches on) through the edge. A healthy
// v2 (the same build and models) is promoted; a v2 whose sidecar aborts 60% of its
// calls from the first step on is rolled back at once, and the callers never see its
// failures: the edge retries each one on v1 (the prediction-v2-first failover cluster).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { setRuntime, stat } from "../../scripts/lib/envoy-admin.js";
import { v2Healthy } from "../../scripts/lib/canary.js";
import { startCanaryMesh, type CanaryMesh } from "../support/canary-mesh.js";

let canary: CanaryMesh;

beforeAll(async () => {
  canary = await startCanaryMesh();
});
afterAll(async () => {
  await canary?.stop();
});

/** The edge's current split, from its runtime (admin /runtime). */
async function weights(): Promise<{ v1: number; v2: number }> {
  const body = (await (await fetch(`${canary.mesh.edgeAdmin}/runtime`)).json()) as { entries: Record<string, { final_value: string }> };
  const value = (v: string) => Number(body.entries[`routing.prediction.prediction-${v}`]?.final_value);
  return { v1: value("v1"), v2: value("v2") };
}

/** Until the edge sees prediction-v2 healthy and not ejected (after a run that ejected it). */
async function v2Back(timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await v2Healthy(canary.mesh.edgeAdmin))) {
    if (Date.now() > deadline) throw new Error(`prediction-v2 not healthy at the edge after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

describe("canary controller", () => {
  it("gives a v2 the edge cannot reach no weight at all", async () => {
    await canary.mesh.killApp("prediction-v2");
    try {
      while (await v2Healthy(canary.mesh.edgeAdmin)) await new Promise((r) => setTimeout(r, 250));
      const { report, callers } = await canary.canary();
      expect(report.outcome).toBe("not_ready");
      expect(report.reason).toMatch(/no healthy prediction-v2/);
      expect(report.steps).toEqual([]);
      expect(await weights()).toEqual({ v1: 100, v2: 0 });
      expect(callers.failures, JSON.stringify(callers.failuresByMessage)).toBe(0);
    } finally {
      await canary.mesh.restartApp("prediction-v2");
    }
  });

  it("promotes a healthy v2 under cached traffic, comparing misses with misses and rankings with rankings", async () => {
    await v2Back();
    const { report, callers } = await canary.canary();
    expect(report.outcome, report.reason).toBe("promoted");
    expect(report.steps.map((s) => [s.weight, s.decision])).toEqual([
      [0, "pass"],
      [20, "pass"],
      [50, "pass"],
    ]);
    expect(report.warm!.answeredByV2).toBeGreaterThan(0);
    for (const step of report.steps) {
      const miss = step.figures.cacheLevels.miss!;
      expect(Math.min(miss.v1.n, miss.v2.n)).toBeGreaterThanOrEqual(report.gates.minCompared);
      expect(step.figures.shadow.pairs).toBeGreaterThanOrEqual(report.gates.minPairs);
      // Same build, same models: the same scores for the items both rank (their top 10s may
      // differ where v2's freshly read item features differ from v1's cached ones).
      expect(step.figures.shadow.drift!.value).toBeLessThan(report.gates.maxScoreDrift);
    }
    for (const step of report.steps.slice(1)) expect(step.figures.edge!.requests).toBeGreaterThanOrEqual(report.gates.minRequests);
    expect(callers.failures, JSON.stringify(callers.failuresByMessage)).toBe(0);
    expect(callers.answersByVersion.v2).toBeGreaterThan(0);
    expect(await weights()).toEqual({ v1: 0, v2: 100 });
  });

  it("rolls back a v2 that aborts 60% of its calls on the first evidence, within a few v2 calls, with no more than 0.1% of callers failing", async () => {
    await canary.allOnV1();
    await v2Back();
    const chaos = (values: Record<string, number>) => setRuntime(canary.sidecarAdmin("prediction-v2"), values);
    const retryStat = (name: string) => stat(canary.mesh.edgeAdmin, `cluster.prediction-v2-first.${name}`);
    const retriesBefore = await retryStat("upstream_rq_retry");
    const retriedOkBefore = await retryStat("upstream_rq_retry_success");
    try {
      // v2 breaks as the traffic reaches it (UNAVAILABLE: a version that cannot serve).
      const { report, callers } = await canary.canary({ onStep: (weight) => (weight === 20 ? chaos({ "chaos.abort_percent": 60, "chaos.abort_grpc_status": 14 }) : undefined) }, 40);
      expect(report.outcome, report.reason).toBe("rolled_back");
      const step = report.steps.at(-1)!;
      expect(step.weight).toBe(20);
      expect(step.reason).toMatch(/failed|ejected|no healthy/);
      // Counted, not timed: the step stops at the first poll that shows the breach over
      // minToStop v2 calls (10). One that judged only at the end of its 5 s interval would
      // have seen about 40 of the callers' calls (20% of 40/s), shadow calls on top.
      expect(step.figures.edge!.requests).toBeLessThan(3 * report.gates.minToStop);
      // The failures v1 answered on retry, as the edge counted them, and as the canary did.
      expect((await retryStat("upstream_rq_retry")) - retriesBefore).toBeGreaterThan(0);
      expect((await retryStat("upstream_rq_retry_success")) - retriedOkBefore).toBeGreaterThan(0);
      expect(step.figures.edge!.retries).toBeGreaterThan(0);
      expect(callers.failures / callers.calls, `${callers.failures} of ${callers.calls}: ${JSON.stringify(callers.firstFailures)}; the step began ${new Date(Date.parse(report.startedAt) + step.startedMs).toISOString()}`).toBeLessThanOrEqual(0.001);
      expect(await weights()).toEqual({ v1: 100, v2: 0 });
    } finally {
      await chaos({ "chaos.abort_percent": 0 });
    }
  });
});
