// `npm run canary -- [--steps 10,25,50] [--interval-s 10] [--report file] ...`: moves
// traffic from prediction-v1 to prediction-v2 step by step, with the gates and the
// report of scripts/lib/canary.ts. --mirror-percent N mirrors N% of v1's live calls to
// v2 during the gate step; the report shows how their answers compared.
import { join } from "node:path";
import { parseArgs } from "node:util";
import { pathToFileURL } from "node:url";
import { localPorts } from "../envoy/topology.js";
import { defaultGates, formatReport, runCanary } from "./lib/canary.js";
import { loadGeneratorAuth } from "./lib/token.js";
import { ROOT } from "./lib/tools.js";

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const { values } = parseArgs({
    options: {
      edge: { type: "string", default: `127.0.0.1:${localPorts.edge}` },
      "edge-admin": { type: "string", default: `http://127.0.0.1:${localPorts.edgeAdmin}` },
      steps: { type: "string", default: "10,25,50" },
      "interval-s": { type: "string", default: "30" },
      "max-step-s": { type: "string" },
      "max-error-rate": { type: "string", default: String(defaultGates.maxErrorRate) },
      "max-fallback-increase": { type: "string", default: String(defaultGates.maxFallbackIncrease) },
      "max-slow-increase": { type: "string", default: String(defaultGates.maxSlowIncrease) },
      "min-overlap": { type: "string", default: String(defaultGates.minOverlap) },
      "max-score-drift": { type: "string", default: String(defaultGates.maxScoreDrift) },
      "min-requests": { type: "string", default: String(defaultGates.minRequests) },
      "mirror-percent": { type: "string", default: "0" },
      report: { type: "string", default: join(ROOT, "bench", "results", "canary-report.json") },
    },
  });
  const metrics = (v: string) => `http://127.0.0.1:${localPorts.appMetrics("prediction", v)}/metrics`;
  const report = await runCanary({
    edge: values.edge!,
    edgeAdmin: values["edge-admin"]!,
    token: (await loadGeneratorAuth("canary-controller")).authorization.slice("Bearer ".length),
    metricsUrls: { v1: metrics("v1"), v2: metrics("v2") },
    steps: values.steps!.split(",").map(Number),
    intervalMs: Number(values["interval-s"]) * 1000,
    ...(values["max-step-s"] ? { maxStepMs: Number(values["max-step-s"]) * 1000 } : {}),
    gates: {
      maxErrorRate: Number(values["max-error-rate"]),
      maxFallbackIncrease: Number(values["max-fallback-increase"]),
      maxSlowIncrease: Number(values["max-slow-increase"]),
      minOverlap: Number(values["min-overlap"]),
      maxScoreDrift: Number(values["max-score-drift"]),
      minRequests: Number(values["min-requests"]),
    },
    mirrorPercent: Number(values["mirror-percent"]),
    reportFile: values.report!,
  });
  console.log(formatReport(report));
  console.log(`report: ${values.report}`);
  process.exit(report.outcome === "promoted" ? 0 : 1);
}
