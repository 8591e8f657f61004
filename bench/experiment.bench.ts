// Experiment assignment, side by side in one run on the same definitions (10
// experiments over 4 layers, 6 running): the in-process assigner the prediction
// service embeds, and the Assign RPC of the experiment service (its own process,
// real Redis) loaded by ghz, next to the bare echo RPC under the same load as the
// floor any RPC pays on this machine.
//
// Knobs: BENCH_SECONDS (per scenario, default 8), EXPERIMENT_BENCH_CONCURRENCY (ghz, default 50).
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Device, Platform } from "../gen/recsys/common/v1/common_pb.js";
import { ExperimentService, ExperimentStatus, type ExperimentSchema } from "../gen/recsys/experiment/v1/experiment_pb.js";
import { freePort, startProcess } from "../scripts/lib/processes.js";
import { createServiceClient } from "../services/kit/index.js";
import { createAssigner, loadAssignerConfig } from "../services/experiment/assigner.js";
import { startRedis } from "../test/support/redis.js";
import { ghz, ratio, summarize, type BenchSuite, type ScenarioResult } from "./harness.js";

const TOKEN = "bench-admin-token";
const TARGET_SPEEDUP = 10;
/** Bounds the latency samples kept in memory (one number per in-process call). */
const MAX_SAMPLES = 3_000_000;

const variants = (model: string) => [
  { name: "control", allocation: 0.5, config: { modelVersion: "v1" } },
  { name: "treatment", allocation: 0.5, config: { modelVersion: model, ensembleWeights: { "ranker-gbdt": 0.6, "ranker-nn": 0.4 } } },
];

const definitions: MessageInitShape<typeof ExperimentSchema>[] = [
  ...["a", "b", "c"].map((x, i) => ({ id: `ranking-${x}`, layer: "ranking", layerOffset: i * 0.3, layerShare: 0.3, status: ExperimentStatus.RUNNING, variants: variants(`v2${x}`) })),
  { id: "ui-mobile", layer: "ui", layerShare: 0.5, status: ExperimentStatus.RUNNING, targeting: { devices: [Device.MOBILE] }, variants: variants("v1") },
  { id: "ui-us", layer: "ui", layerOffset: 0.5, status: ExperimentStatus.RUNNING, targeting: { locations: ["US"] }, variants: variants("v1") },
  { id: "diversity", layer: "rerank", status: ExperimentStatus.RUNNING, variants: variants("v1") },
  ...["d1", "d2"].map((id) => ({ id, layer: "drafts", layerOffset: id === "d1" ? 0 : 0.5, layerShare: 0.5, status: ExperimentStatus.DRAFT, variants: variants("v3") })),
  ...["s1", "s2"].map((id) => ({ id, layer: "ranking", status: ExperimentStatus.STOPPED, variants: variants("v0") })),
];

const context = { device: Device.MOBILE, platform: Platform.IOS, location: "US-CA" };

const suite: BenchSuite = {
  name: "experiment",
  async run() {
    const durationS = Number(process.env.BENCH_SECONDS ?? 8);
    const concurrency = Number(process.env.EXPERIMENT_BENCH_CONCURRENCY ?? 50);
    const redis = await startRedis();
    const port = await freePort();
    const server = await startProcess("node", ["--import", "tsx", "services/experiment/server.ts"], {
      env: { GRPC_PORT: String(port), REDIS_URL: redis.url, ADMIN_TOKEN: TOKEN, HOLDOUT_PERCENT: "2", LOG_LEVEL: "info" },
      waitFor: /listening/,
    });
    const assigner = await createAssigner(loadAssignerConfig({ REDIS_URL: redis.url, HOLDOUT_PERCENT: "2" }));
    try {
      const client = createServiceClient(ExperimentService, `127.0.0.1:${port}`);
      for (const experiment of definitions) {
        await client.createExperiment({ experiment }, { headers: { authorization: `Bearer ${TOKEN}` } });
      }
      await assigner.refresh();

      // In process: one synchronous call after another, each timed (performance.now()
      // adds a few tens of ns per call, so the figures are slightly pessimistic).
      const latencies: number[] = [];
      let assigned = 0;
      const started = performance.now();
      const until = started + durationS * 1000;
      for (let i = 0; latencies.length < MAX_SAMPLES && performance.now() < until; i++) {
        const t = performance.now();
        assigned += assigner.assign(`u${i}`, context).assignments.length;
        latencies.push(performance.now() - t);
      }
      const inProcess = summarize("assign in process (library, 1 thread)", latencies, performance.now() - started, 0, {
        experiments_running: 6,
        assignments_per_call: Math.round((assigned / latencies.length) * 100) / 100,
      });

      const rpc = await ghz({
        name: `Assign RPC (ghz, concurrency ${concurrency})`,
        address: `127.0.0.1:${port}`,
        call: "recsys.experiment.v1.ExperimentService.Assign",
        proto: "recsys/experiment/v1/experiment.proto",
        data: { user_id: "u{{.RequestNumber}}", context: { device: "DEVICE_MOBILE", platform: "PLATFORM_IOS", location: "US-CA" } },
        concurrency,
        connections: 2,
        durationS,
      });

      const echoPort = await freePort();
      const echoServer = await startProcess("node", ["--import", "tsx", "services/echo/server.ts"], {
        env: { GRPC_PORT: String(echoPort), LOG_LEVEL: "info" },
        waitFor: /listening/,
      });
      const echo = await ghz({
        name: `echo RPC baseline (ghz, concurrency ${concurrency})`,
        address: `127.0.0.1:${echoPort}`,
        call: "recsys.echo.v1.EchoService.Echo",
        proto: "recsys/echo/v1/echo.proto",
        data: { message: "u{{.RequestNumber}}" },
        concurrency,
        connections: 2,
        durationS,
      }).finally(() => echoServer.stop());

      const scenarios: ScenarioResult[] = [inProcess, rpc, echo];
      return {
        scenarios,
        ratios: [
          ratio(
            "assign: in-process calls/s / Assign RPC QPS",
            inProcess.qps / rpc.qps,
            `>= ${TARGET_SPEEDUP} (why the prediction service embeds the library)`,
            inProcess.qps / rpc.qps >= TARGET_SPEEDUP && rpc.errors === 0,
          ),
          ratio("Assign RPC QPS / echo RPC QPS", rpc.qps / echo.qps, "informational: Assign's cost over the cheapest RPC", true),
        ],
      };
    } finally {
      await assigner.close();
      await server.stop();
      await redis.stop();
    }
  },
};
export default suite;
