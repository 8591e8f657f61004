// `node scripts/in-netns.mjs npx tsx scripts/canary-drill.ts [--runs 5] [--rps 30] [--steps 20,50] [--interval-s 8]`:
// the canary as an operator meets it, repeated. Starts the whole mesh (prediction-v2 the
// same build and models as v1) in a private network namespace, sends cached Predict
// traffic (Zipf 1.1 users, caches on) through the edge, and runs the canary `runs`
// times, putting all traffic back on v1 between runs. Bounded: loopback only, each
// step at most 4 x its interval. Writes every run's report and the callers' failures
// to bench/results/canary-drill.json and prints each run's table.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { formatReport, runCanary, type CanaryReport } from "./canary.js";
import { startTraffic, usersByActivity, type TrafficTally } from "./canary-traffic.js";
import { setRuntime } from "./envoy-admin.js";
import { startMesh, waitEdgeHealthy } from "./mesh.js";
import { loadGeneratorAuth } from "./token.js";
import { ROOT } from "./tools.js";

const { values } = parseArgs({
  options: {
    runs: { type: "string", default: "5" },
    rps: { type: "string", default: "30" },
    steps: { type: "string", default: "20,50" },
    "interval-s": { type: "string", default: "8" },
    out: { type: "string", default: join(ROOT, "bench", "results", "canary-drill.json") },
  },
});

const runDir = mkdtempSync(join(tmpdir(), "recsys-canary-drill-"));
const mesh = await startMesh({ runDir, env: { LOG_LEVEL: "warn" } });
const results: { report: CanaryReport; callers: TrafficTally }[] = [];
try {
  const token = (await loadGeneratorAuth("canary-drill")).authorization.slice("Bearer ".length);
  const metrics = (id: string) => `http://127.0.0.1:${mesh.instances.find((i) => i.id === id)!.metricsPort}/metrics`;
  const users = usersByActivity();
  for (let run = 1; run <= Number(values.runs); run++) {
    await setRuntime(mesh.edgeAdmin, { "routing.prediction.prediction-v1": 100, "routing.prediction.prediction-v2": 0 });
    // A fresh v2 each run: its in-process cache emptied by a restart, as a new deployment's is.
    await mesh.killApp("prediction-v2", "SIGTERM");
    await mesh.restartApp("prediction-v2");
    await waitEdgeHealthy(mesh.edgeAdmin, mesh.instances, 60_000);
    const traffic = startTraffic({ edge: mesh.edge, token, rps: Number(values.rps), users, seed: run });
    // v1's caches warm under the traffic first, as in production.
    await new Promise((r) => setTimeout(r, 10_000));
    const report = await runCanary({
      edge: mesh.edge,
      edgeAdmin: mesh.edgeAdmin,
      token,
      metricsUrls: { v1: metrics("prediction-v1"), v2: metrics("prediction-v2") },
      steps: values.steps!.split(",").map(Number),
      intervalMs: Number(values["interval-s"]) * 1000,
      log: (line) => console.log(`run ${run}: ${line}`),
    });
    const callers = await traffic.stop();
    results.push({ report, callers });
    console.log(`\nrun ${run}: ${report.outcome}; callers: ${callers.failures} of ${callers.calls} calls failed\n${formatReport(report)}\n`);
  }
} finally {
  await mesh.stop();
  rmSync(runDir, { recursive: true, force: true });
}
mkdirSync(join(values.out!, ".."), { recursive: true });
const promoted = results.filter((r) => r.report.outcome === "promoted").length;
writeFileSync(values.out!, JSON.stringify({ when: new Date().toISOString(), options: values, promoted, runs: results.length, results }, null, 2) + "\n");
console.log(`promoted in ${promoted} of ${results.length} runs; ${values.out}`);
process.exit(promoted === results.length ? 0 : 1);
