// `npm run bench -- edge`: what each part of the edge costs, measured side by side.
// Next to the mesh's own edge, this starts a second Envoy from the same rendered config
// (envoy/local/edge.yaml) with one part taken out, on its own ports and in front of
// the same echo sidecar, rate-limit service and Zipkin. Echo calls go through it and
// its CPU seconds (from /proc) are divided by the calls served; one variant keeps only the
// router, for what Envoy itself costs per call on the machine. The variants run in
// rounds, each round in the same order, so a machine that slows down shows in every
// variant alike. CPU per call is the figure; QPS is beside it.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parse, stringify } from "yaml";
import { stat } from "../scripts/lib/envoy-admin.js";
import { startMesh } from "../scripts/lib/mesh.js";
import { freePort, startProcess } from "../scripts/lib/processes.js";
import { loadGeneratorAuth } from "../scripts/lib/token.js";
import { ROOT, tool } from "../scripts/lib/tools.js";
import { cpuSeconds, ghz, ratio, type BenchSuite, type ScenarioResult } from "./harness.js";

const seconds = Number(process.env.EDGE_SECONDS ?? 8);
const rounds = Number(process.env.EDGE_ROUNDS ?? 2);

/** A parsed Envoy config: walked by key, as the tests walk them. */
type Obj = Record<string, any>;

const manager = (config: Obj): Obj =>
  config.static_resources.listeners[0].filter_chains[0].filters.find((f: Obj) => f.name === "envoy.filters.network.http_connection_manager").typed_config;
const withoutFilter = (name: string) => (config: Obj) => {
  const hcm = manager(config);
  hcm.http_filters = hcm.http_filters.filter((f: Obj) => f.name !== name);
};

/** Each variant changes a copy of the rendered edge config. */
const variants: { name: string; change: (config: Obj) => void }[] = [
  { name: "as configured", change: () => {} },
  {
    name: "without the JWT cache",
    change: (config) => {
      const jwt = manager(config).http_filters.find((f: Obj) => f.name === "envoy.filters.http.jwt_authn").typed_config;
      for (const provider of Object.values(jwt.providers) as Obj[]) delete provider.jwt_cache_config;
    },
  },
  { name: "without the global rate limit", change: withoutFilter("envoy.filters.http.ratelimit") },
  { name: "without tracing", change: (config) => delete manager(config).tracing },
  {
    // What Envoy costs here before any of our parts: the same listener, mTLS to the same
    // sidecar, the router alone. The floor every hop of a call pays on this machine.
    name: "router only",
    change: (config) => {
      const hcm = manager(config);
      hcm.http_filters = hcm.http_filters.filter((f: Obj) => f.name === "envoy.filters.http.router");
      delete hcm.tracing;
      delete hcm.access_log;
    },
  },
];

/** Runs echo through an edge started from `config` and returns its CPU per call. */
async function measureVariant(name: string, config: Obj, dir: string, metadata: Record<string, string>): Promise<ScenarioResult> {
  const [port, adminPort] = [await freePort(), await freePort()];
  config.admin.address.socket_address.port_value = adminPort;
  config.static_resources.listeners[0].address.socket_address.port_value = port;
  const hcm = manager(config);
  for (const log of hcm.access_log ?? []) if (log.typed_config.path) log.typed_config.path = join(dir, "access.log");
  const path = join(dir, "edge.yaml");
  writeFileSync(path, stringify(config));
  const envoy = await startProcess(tool("envoy"), ["-c", path, "--disable-hot-restart", "-l", "warn", "--base-id", String(port)], {});
  try {
    const admin = `http://127.0.0.1:${adminPort}`;
    // Active health checking marks the echo sidecar healthy before the first call.
    for (let waited = 0; (await stat(admin, "cluster.echo.membership_healthy").catch(() => 0)) < 1; waited += 100) {
      if (waited > 30_000) throw new Error(`edge variant "${name}": echo never became healthy:\n${envoy.output()}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const address = `127.0.0.1:${port}`;
    const run = (durationS: number) =>
      ghz({ name: `edge ${name}`, address, call: "recsys.echo.v1.EchoService.Echo", proto: "recsys/echo/v1/echo.proto", data: { message: "x".repeat(256) }, concurrency: 16, connections: 4, durationS, metadata });
    await run(2);
    const before = cpuSeconds(envoy.child.pid!);
    const result = await run(seconds);
    const busy = cpuSeconds(envoy.child.pid!) - before;
    const calls = Math.max(1, (result.count as number) + ((result.skipped_first as number | undefined) ?? 0));
    return { ...result, cpu_us_per_call: { edge: Math.round((busy * 1e6) / calls) } };
  } finally {
    await envoy.stop();
  }
}

const suite: BenchSuite = {
  name: "edge",
  async run() {
    const mesh = await startMesh({ only: ["echo"], env: { LOG_LEVEL: "warn" } });
    const dir = mkdtempSync(join(tmpdir(), "recsys-edge-bench-"));
    try {
      const metadata = await loadGeneratorAuth("bench-edge");
      const rendered = readFileSync(join(ROOT, "envoy", "local", "edge.yaml"), "utf8");
      const byVariant = new Map<string, ScenarioResult[]>();
      for (let round = 0; round < rounds; round++) {
        for (const variant of variants) {
          const config = parse(rendered) as Obj;
          variant.change(config);
          const result = await measureVariant(variant.name, config, dir, metadata);
          console.log(`round ${round + 1}, ${variant.name}: ${(result.cpu_us_per_call as Record<string, number>).edge} us of edge CPU per call, ${result.qps} QPS`);
          byVariant.set(variant.name, [...(byVariant.get(variant.name) ?? []), result]);
        }
      }
      const scenarios = [...byVariant].map(([name, results]) => {
        const perCall = results.map((r) => (r.cpu_us_per_call as Record<string, number>).edge!);
        const best = results.reduce((a, b) => ((a.qps as number) >= (b.qps as number) ? a : b));
        return { ...best, name: `edge ${name}`, cpu_us_per_call: { edge: Math.round(perCall.reduce((a, b) => a + b, 0) / perCall.length) }, cpu_us_per_call_runs: perCall };
      });
      const edgeCpu = (name: string) => (scenarios.find((s) => s.name === `edge ${name}`)!.cpu_us_per_call as Record<string, number>).edge!;
      const configured = edgeCpu("as configured");
      return {
        scenarios,
        ratios: [
          ratio("edge CPU per echo call, JWT cache on / off", configured / edgeCpu("without the JWT cache"), "< 1", configured < edgeCpu("without the JWT cache")),
          ratio("edge CPU per echo call spent on the global rate limit (us)", configured - edgeCpu("without the global rate limit"), "informational", true),
          ratio("edge CPU per echo call spent on tracing (us)", configured - edgeCpu("without tracing"), "informational", true),
          ratio("edge CPU per echo call with the router alone (us)", edgeCpu("router only"), "informational", true),
        ],
      };
    } finally {
      rmSync(dir, { recursive: true, force: true });
      await mesh.stop();
    }
  },
};
export default suite;
