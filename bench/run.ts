// `npm run bench [-- <filter>]`: runs every bench/*.bench.ts whose suite name
// contains the filter, then merges the results into bench/results/latest.json
// (suites not run this time keep their last results, with their own date).
import { existsSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import type { BenchSuite, Ratio, ScenarioResult } from "./harness.js";
import { ROOT } from "../scripts/lib/tools.js";

interface SuiteResult {
  suite: string;
  measured_at: string;
  /** The Node that ran the suite; the mesh's apps run on the same (the `node` first on PATH). */
  node: string;
  scenarios: ScenarioResult[];
  ratios: Ratio[];
}

const filter = process.argv[2] ?? "";
const benchDir = join(ROOT, "bench");
const resultsFile = join(benchDir, "results", "latest.json");

const files = readdirSync(benchDir).filter((f) => f.endsWith(".bench.ts")).sort();
const suites: BenchSuite[] = [];
for (const file of files) {
  const suite = (await import(pathToFileURL(join(benchDir, file)).href)).default as BenchSuite;
  if (suite.name.includes(filter)) suites.push(suite);
}
if (suites.length === 0) {
  console.error(`no bench suite matches "${filter}"; suites: ${files.join(", ")}`);
  process.exit(2);
}

const fresh: SuiteResult[] = [];
for (const suite of suites) {
  console.log(`\n== ${suite.name}`);
  const { scenarios, ratios } = await suite.run();
  console.table(scenarios.map(({ name, qps, p50_ms, p95_ms, p99_ms, errors }) => ({ name, qps, p50_ms, p95_ms, p99_ms, errors })));
  if (ratios.length) console.table(ratios);
  fresh.push({ suite: suite.name, measured_at: new Date().toISOString(), node: process.version, scenarios, ratios });
}

// Read at the end, not the start, so suites run at the same time do not drop each other's results.
const previous: SuiteResult[] = existsSync(resultsFile) ? (JSON.parse(readFileSync(resultsFile, "utf8")).suites ?? []) : [];
const merged = [...previous.filter((p) => !fresh.some((f) => f.suite === p.suite)), ...fresh].sort((a, b) => a.suite.localeCompare(b.suite));
const output = {
  machine: { cpus: cpus().length, cpu_model: cpus()[0]?.model ?? "unknown", memory_gib: Math.round(totalmem() / 2 ** 30), platform: process.platform },
  scenarios: merged.flatMap((s) => s.scenarios.map((sc) => ({ suite: s.suite, ...sc }))),
  ratios: merged.flatMap((s) => s.ratios.map((r) => ({ suite: s.suite, ...r }))),
  suites: merged,
};
writeFileSync(resultsFile, `${JSON.stringify(output, null, 2)}\n`);
console.log(`\nwrote ${resultsFile}`);
process.exit(fresh.every((s) => s.ratios.every((r) => r.pass)) ? 0 : 1);
