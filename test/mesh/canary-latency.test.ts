// The canary against a v2 that is slow only on cache misses: its calls to the feature
// and retrieval services (the calls a miss makes, a hit does not) pass through a proxy
// that holds each request chunk, turned on as the first step begins. Under cached
// traffic most answers are hits and as fast as v1's; the canary compares misses with
// misses (the stages only a miss runs, from both apps' /metrics) and rolls back.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { localPorts } from "../../envoy/topology.js";
import { PredictionService } from "../../gen/recsys/prediction/v1/prediction_pb.js";
import { edgeClient, edgeTokenMinter } from "../support/tokens.js";
import { startCanaryMesh, type CanaryMesh } from "../support/canary-mesh.js";
import { startDelayProxy, type DelayProxy } from "../support/delay-proxy.js";

let canary: CanaryMesh;
/** v2's delaying proxies; v1's calls take the same extra hop, never delayed, so the versions differ only by the delay. */
let proxies: DelayProxy[] = [];
let allProxies: DelayProxy[] = [];

beforeAll(async () => {
  const viaProxies = async (version: string) => [
    await startDelayProxy(localPorts.egress("prediction", version, "feature")),
    await startDelayProxy(localPorts.egress("prediction", version, "retrieval")),
  ];
  const v1 = await viaProxies("v1");
  proxies = await viaProxies("v2");
  allProxies = [...v1, ...proxies];
  const upstreams = ([toFeature, toRetrieval]: DelayProxy[]) => ({ FEATURE_ADDR: toFeature!.address, RETRIEVAL_ADDR: toRetrieval!.address });
  canary = await startCanaryMesh({ instanceEnv: { "prediction-v1": upstreams(v1), "prediction-v2": upstreams(proxies) } });
});
afterAll(async () => {
  await canary?.stop();
  await Promise.all(allProxies.map((p) => p.close()));
});

/** Median latency of v1 computing an answer (cache bypassed), as its answers report it. */
async function v1MissMs(): Promise<number> {
  const client = edgeClient(PredictionService, canary.mesh.edge, (await edgeTokenMinter())("canary-latency"));
  const ms: number[] = [];
  for (let i = 0; i < 15; i++) {
    const answer = await client.predict({ userId: `u${String(i + 1).padStart(6, "0")}`, numPredictions: 10, bypassCache: true }, { headers: { "x-canary": "v1" } });
    ms.push(answer.metadata!.latencyMs);
  }
  return ms.sort((a, b) => a - b)[7]!;
}

describe("canary latency on misses", () => {
  it("rolls back a v2 whose cache misses are several times slower than v1's", async () => {
    // A miss calls features and candidates at once, then item features: two delays in a row.
    // 2 x 2.5 x v1's miss latency: v2's misses some 5 times slower than v1's on this machine
    // (at most 2 x 400 ms more, so a slow miss still answers well within the caller's deadline).
    const delayMs = Math.min(400, Math.max(50, Math.round(2.5 * (await v1MissMs()))));
    const { report, callers } = await canary.canary({ onStep: (weight) => (weight === 20 ? proxies.forEach((p) => p.setDelay(delayMs)) : undefined) });
    proxies.forEach((p) => p.setDelay(0));
    expect(report.outcome, report.reason).toBe("rolled_back");
    expect(report.steps.map((s) => [s.weight, s.decision])).toEqual([
      [0, "pass"],
      [20, "rollback"],
    ]);
    // Caught on the misses: a miss stage slower than v1's p90, or misses falling back to cheaper rungs.
    expect(report.reason).toMatch(/^misses: stage|^cache miss:/);
    const step = report.steps.at(-1)!;
    expect(callers.failures / callers.calls, `${callers.failures} of ${callers.calls} with ${delayMs} ms delay: ${JSON.stringify(callers.firstFailures)}; the step began ${new Date(Date.parse(report.startedAt) + step.startedMs).toISOString()} and took ${step.durationMs} ms`).toBeLessThanOrEqual(0.001);
  });
});
