// `npm run chaos`: kill -9 each part of the mesh in turn under ghz load through the
// edge, and measure what callers saw (scripts/lib/chaos.ts). Bounded (loopback only,
// -z per fault) and run inside a private network namespace (scripts/in-netns.mjs), so
// it can run beside `npm start`. Writes bench/results/chaos.md.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { chaosTable, faults, faultSummary, runFault, waitWhole, type FaultResult, type FaultRunOptions } from "./lib/chaos.js";
import { startMesh } from "./lib/mesh.js";
import { ROOT } from "./lib/tools.js";

const { values } = parseArgs({
  options: {
    "duration-s": { type: "string", default: "20" },
    "kill-after-s": { type: "string", default: "5" },
    rps: { type: "string", default: "100" },
    concurrency: { type: "string", default: "8" },
    only: { type: "string" },
  },
});
const options: Omit<FaultRunOptions, "dataDir"> = {
  durationS: Number(values["duration-s"]),
  killAfterS: Number(values["kill-after-s"]),
  rps: Number(values.rps),
  concurrency: Number(values.concurrency),
  samplers: 2,
  users: 500,
  settleS: 10,
};
const chosen = values.only ? faults.filter((f) => values.only!.split(",").some((name) => f.name.startsWith(name))) : faults;
const runDir = mkdtempSync(join(tmpdir(), "recsys-chaos-"));
const mesh = await startMesh({ runDir, env: { LOG_LEVEL: "warn" }, log: (line) => console.log(`  [mesh] ${line}`) });
const results: FaultResult[] = [];
try {
  for (const fault of chosen) {
    console.log(`killing ${fault.name} under ${options.rps} rps for ${options.durationS} s...`);
    const result = await runFault(mesh, fault, { ...options, dataDir: runDir });
    console.log(`  ${faultSummary(result)}`);
    results.push(result);
    await waitWhole(mesh);
  }
} finally {
  await mesh.stop();
  rmSync(runDir, { recursive: true, force: true });
}
const command = `npm run chaos${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(" ")}` : ""}`;
const text = `# Chaos: kill -9 under load

\`${command}\`, ${new Date().toISOString().slice(0, 10)}, in a private network namespace. For each fault: ghz
\`-c ${options.concurrency} --rps ${options.rps} -z ${options.durationS}s\` of Predict through the edge (${options.users} users, cache on), the
process killed with SIGKILL after ${options.killAfterS} s, ${options.samplers} Node callers sampling Predict with \`bypass_cache\` (so each
call walks the fallback ladder) through the edge all along. "PRIMARY again": from the kill until 10 sampled
answers in a row are PRIMARY. "Back": until the killed process answers its health check (Redis: PING) after
the mesh's supervisor restarted it. "Within one rung": every sampled answer after the kill was at most one
rung of the live ladder (PRIMARY, SIMPLIFIED, POPULAR, STATIC) below the best the fault leaves possible.
The last row is not a kill: retrieval's sidecar aborts 30% of calls (runtime \`chaos.abort_percent\`)
from ${options.killAfterS} s to the end of the load.

${chaosTable(results)}
`;
writeFileSync(join(ROOT, "bench", "results", "chaos.md"), text);
console.log(`\n${chaosTable(results)}\n\nwrote bench/results/chaos.md`);
