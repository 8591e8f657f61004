// `node scripts/in-netns.mjs npx tsx scripts/canary-drill.ts [--runs 5] [--rps 30]
// [--steps 20,50] [--interval-s 8] [--abort-percent 60]`: the canary as an operator
// meets it, repeated. Starts the whole mesh (prediction-v2 the same build and models as
// v1) in a private network namespace, sends cached Predict traffic (Zipf 1.1 users,
// caches on) through the edge, and runs the canary `runs` times, putting all traffic
// back on v1 and restarting v2 between runs. --abort-percent makes v2's sidecar abort
// that share of its calls (UNAVAILABLE) from the first step on. Bounded: loopback only,
// each step at most 4 x its interval. Writes every run's report and what the callers
// saw from the canary's start to its end to bench/results/canary-drill[-abort].json,
// and prints each run's table.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { parseArgs } from "node:util";
import { formatReport, meshTarget, runCanary, type CanaryReport } from "./lib/canary.js";
import { startTraffic, tallySince, usersByActivity, type TrafficTally } from "./lib/canary-traffic.js";
import { setRuntime } from "./lib/envoy-admin.js";
import { startMesh, waitEdgeHealthy } from "./lib/mesh.js";
import { loadGeneratorAuth } from "./lib/token.js";
import { ROOT } from "./lib/tools.js";

const { values } = parseArgs({
  options: {
    runs: { type: "string", default: "5" },
    rps: { type: "string", default: "30" },
    steps: { type: "string", default: "20,50" },
    "interval-s": { type: "string", default: "8" },
    "abort-percent": { type: "string", default: "0" },
    out: { type: "string" },
  },
});

const out = values.out ?? join(ROOT, "bench", "results", Number(values["abort-percent"]) > 0 ? "canary-drill-abort.json" : "canary-drill.json");
const runDir = mkdtempSync(join(tmpdir(), "recsys-canary-drill-"));
const mesh = await startMesh({ runDir, env: { LOG_LEVEL: "warn" } });
const results: { report: CanaryReport; callers: TrafficTally }[] = [];
try {
  const token = (await loadGeneratorAuth("canary-drill")).authorization.slice("Bearer ".length);
  const instance = (id: string) => mesh.instances.find((i) => i.id === id)!;
  const v2Chaos = (percent: number) => setRuntime(`http://127.0.0.1:${instance("prediction-v2").sidecarAdminPort}`, { "chaos.abort_percent": percent, "chaos.abort_grpc_status": 14 });
  const abortPercent = Number(values["abort-percent"]);
  const users = usersByActivity();
  for (let run = 1; run <= Number(values.runs); run++) {
    await setRuntime(mesh.edgeAdmin, { "routing.prediction.prediction-v1": 100, "routing.prediction.prediction-v2": 0 });
    await waitEdgeHealthy(mesh.edgeAdmin, mesh.instances, 60_000);
    // A fresh v2 each run: its in-process cache emptied by a restart, as a new deployment's is.
    await mesh.killApp("prediction-v2", "SIGTERM");
    await mesh.restartApp("prediction-v2");
    await waitEdgeHealthy(mesh.edgeAdmin, mesh.instances, 60_000);
    const traffic = startTraffic({ edge: mesh.edge, token, rps: Number(values.rps), users, seed: run, timeoutMs: 10_000 });
    // v1's caches warm under the traffic first, as in production; the callers count from the canary's start.
    await new Promise((r) => setTimeout(r, 10_000));
    const before = traffic.tally();
    const report = await runCanary({
      ...meshTarget(mesh, token),
      steps: values.steps!.split(",").map(Number),
      intervalMs: Number(values["interval-s"]) * 1000,
      log: (line) => console.log(`run ${run}: ${line}`),
      onStep: async (weight) => {
        if (abortPercent > 0 && weight === Number(values.steps!.split(",")[0])) await v2Chaos(abortPercent);
      },
    });
    await v2Chaos(0);
    const callers = tallySince(await traffic.stop(), before);
    results.push({ report, callers });
    console.log(`\nrun ${run}: ${report.outcome}; callers: ${callers.failures} of ${callers.calls} calls failed\n${formatReport(report)}\n`);
  }
} finally {
  await mesh.stop();
  rmSync(runDir, { recursive: true, force: true });
}
mkdirSync(dirname(out), { recursive: true });
const promoted = results.filter((r) => r.report.outcome === "promoted").length;
const expected = Number(values["abort-percent"]) > 0 ? "rolled_back" : "promoted";
const asExpected = results.filter((r) => r.report.outcome === expected).length;
writeFileSync(out, JSON.stringify({ when: new Date().toISOString(), options: values, promoted, runs: results.length, results }, null, 2) + "\n");
console.log(`${expected} in ${asExpected} of ${results.length} runs; ${out}`);
process.exit(asExpected === results.length ? 0 : 1);
