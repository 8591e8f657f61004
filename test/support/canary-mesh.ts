// The whole mesh for the canary tests, with cached Predict traffic as production sends
// it (scripts/lib/canary-traffic.ts) and the canary controller run against it.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { meshTarget, runCanary, type CanaryOptions, type CanaryReport } from "../../scripts/lib/canary.js";
import { startTraffic, tallySince, usersByActivity, type TrafficTally } from "../../scripts/lib/canary-traffic.js";
import { setRuntime } from "../../scripts/lib/envoy-admin.js";
import { startMesh, type Mesh, type MeshOptions } from "../../scripts/lib/mesh.js";
import { edgeTokenMinter } from "./tokens.js";

export interface CanaryMesh {
  mesh: Mesh;
  runDir: string;
  sidecarAdmin(id: string): string;
  /** All traffic on v1, as before a canary. */
  allOnV1(): Promise<void>;
  /**
   * One canary run under `rps` of cached Predict traffic that began (and warmed v1's
   * caches) before it; returns the report and what the callers saw from its start to its end.
   */
  canary(options?: Partial<CanaryOptions>, rps?: number): Promise<{ report: CanaryReport; callers: TrafficTally }>;
  stop(): Promise<void>;
}

export async function startCanaryMesh(options: MeshOptions = {}): Promise<CanaryMesh> {
  const runDir = mkdtempSync(join(tmpdir(), "recsys-canary-test-"));
  const mesh = await startMesh({ runDir, env: { LOG_LEVEL: "warn" }, ...options });
  const token = (await edgeTokenMinter())("canary-test");
  const instance = (id: string) => mesh.instances.find((i) => i.id === id)!;
  const users = usersByActivity();
  let run = 0;
  const allOnV1 = () => setRuntime(mesh.edgeAdmin, { "routing.prediction.prediction-v1": 100, "routing.prediction.prediction-v2": 0 });
  return {
    mesh,
    runDir,
    sidecarAdmin: (id) => `http://127.0.0.1:${instance(id).sidecarAdminPort}`,
    allOnV1,
    async canary(overrides = {}, rps = 30) {
      await allOnV1();
      run++;
      const traffic = startTraffic({ edge: mesh.edge, token, rps, users, seed: run, timeoutMs: 10_000 });
      try {
        // v1 serves the hot users from its caches before the canary starts.
        while ((traffic.tally().answersByVersion.v1 ?? 0) < 150) await new Promise((r) => setTimeout(r, 100));
        const before = traffic.tally();
        const report = await runCanary({
          ...meshTarget(mesh, token),
          steps: [20, 50],
          intervalMs: 5000,
          // A loaded machine answers fewer calls a second: a step may wait for its counts.
          maxStepMs: 60_000,
          gates: { minRequests: 60 },
          reportFile: join(runDir, `canary-${run}.json`),
          log: () => undefined,
          ...overrides,
        });
        return { report, callers: tallySince(await traffic.stop(), before) };
      } finally {
        await traffic.stop();
      }
    },
    async stop() {
      await mesh.stop();
      rmSync(runDir, { recursive: true, force: true });
    },
  };
}
