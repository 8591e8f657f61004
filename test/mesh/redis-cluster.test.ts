// `npm start -- --redis-cluster`: the whole mesh on a 6-node Redis Cluster on loopback
// (3 masters, a replica each). Every service, the materialiser and the edge's rate-limit
// service keep their data there; a Predict reaches PRIMARY and then its cache, and the
// rate limit answers from the cluster rather than failing open.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CacheLevel, FallbackLevel, PredictionService } from "../../gen/recsys/prediction/v1/prediction_pb.js";
import { stats } from "../../scripts/lib/envoy-admin.js";
import { startMesh, type Mesh } from "../../scripts/lib/mesh.js";
import { edgeClient, edgeTokenMinter } from "../support/tokens.js";

let mesh: Mesh;
const runDir = mkdtempSync(join(tmpdir(), "recsys-cluster-mesh-"));

beforeAll(async () => {
  mesh = await startMesh({ runDir, redisCluster: true, env: { LOG_LEVEL: "warn" } });
});
afterAll(async () => {
  await mesh?.stop();
  rmSync(runDir, { recursive: true, force: true });
});

describe("the mesh on a Redis Cluster", () => {
  it("names the cluster's six nodes", () => {
    expect(mesh.redisClusterNodes?.split(",")).toHaveLength(6);
  });

  it("answers Predict from features and candidates held in the cluster, then from its cache", async () => {
    const client = edgeClient(PredictionService, mesh.edge, (await edgeTokenMinter())("cluster-user"));
    const computed = await client.predict({ userId: "u000042", numPredictions: 10, bypassCache: true }, { timeoutMs: 10_000 });
    expect(computed.metadata?.fallbackLevel, computed.metadata?.fallbackReason).toBe(FallbackLevel.PRIMARY);
    expect(computed.predictions).toHaveLength(10);
    // The first cached call fills L1 and L2; a second finds it.
    await client.predict({ userId: "u000043", numPredictions: 10 }, { timeoutMs: 10_000 });
    const cached = await client.predict({ userId: "u000043", numPredictions: 10 }, { timeoutMs: 10_000 });
    expect([CacheLevel.L1, CacheLevel.L2]).toContain(cached.metadata?.cacheLevel);
  });

  it("keeps the edge's rate-limit counters in the cluster: every check answered, none failed open", async () => {
    // Counted over this test's own calls: while twenty processes start, a check may pass
    // the filter's timeout and fail open, which says nothing about the cluster.
    const checks = async () => {
      const found = await stats(mesh.edgeAdmin, "ratelimit\\.(ok|error|failure_mode_allowed)$");
      return (suffix: string) => [...found].filter(([name]) => name.endsWith(`ratelimit.${suffix}`)).reduce((n, [, v]) => n + v, 0);
    };
    const before = await checks();
    const client = edgeClient(PredictionService, mesh.edge, (await edgeTokenMinter())("cluster-rate-limit"));
    for (let i = 0; i < 10; i++) await client.predict({ userId: "u000044", numPredictions: 10 }, { timeoutMs: 10_000 });
    const after = await checks();
    const delta = (suffix: string) => after(suffix) - before(suffix);
    expect(delta("ok")).toBeGreaterThanOrEqual(10);
    expect(delta("error")).toBe(0);
    expect(delta("failure_mode_allowed")).toBe(0);
  });
});
