// `npm run bench -- prediction`: the prediction service's own figures, each next to
// its baseline in the same run.
//  1. Zipf(1.1) users after a warm-up: the combined L1 + L2 hit rate (target >= 90%),
//     without and with the hot users precomputed (`npm run precompute`).
//  2. Micro-batching vs one ONNX run per request at concurrency 64, with the
//     service's batcher and inference workers, for requests of 200 candidates (what
//     Predict ranks) and of 10 (target >= 3x throughput, p99 no worse than 1.5x).
//  3. Full pipeline (cache bypassed) vs cached Predict: p50, p99, QPS.
// Redis, the experiment, feature, retrieval and prediction services run as their
// own processes (as `npm start` runs them, without Envoy); the load comes from here.
// Knobs: PREDICTION_BENCH_SECONDS (per measured scenario, default 8).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Device } from "../gen/recsys/common/v1/common_pb.js";
import { FeatureService } from "../gen/recsys/feature/v1/feature_pb.js";
import { CacheLevel, PredictionService } from "../gen/recsys/prediction/v1/prediction_pb.js";
import { waitServing } from "../scripts/lib/mesh.js";
import { freePort, startProcess, type Started } from "../scripts/lib/processes.js";
import { ROOT } from "../scripts/lib/tools.js";
import { createServiceClient } from "../services/kit/index.js";
import { MicroBatcher } from "../services/prediction/batcher.js";
import { loadPredictionConfig } from "../services/prediction/config.js";
import { WorkerModel } from "../services/prediction/inference.js";
import { seedBatchFeatures } from "../services/prediction/test/feature-fixtures.js";
import { startRedis } from "../test/support/redis.js";
import { measure, ratio, summarize, zipfSampler, type BenchSuite, type Ratio, type ScenarioResult } from "./harness.js";
import { usersByActivity } from "../scripts/lib/canary-traffic.js";

const seconds = Number(process.env.PREDICTION_BENCH_SECONDS ?? 8);
const ADMIN_TOKEN = "bench-admin-token";
const durationMs = seconds * 1000;

/** Starts services/<name>/server.ts as its own process, adds it to `running`, and waits until it is SERVING. */
async function startService(running: Started[], name: string, env: Record<string, string>): Promise<string> {
  const port = await freePort();
  running.push(await startProcess("node", ["--import", "tsx", join("services", name, "server.ts")], { env: { ...env, GRPC_PORT: String(port) } }));
  const address = `127.0.0.1:${port}`;
  await waitServing(address, "", 120_000);
  return address;
}

/** Closed-loop load for durationMs: every call's latency, and the time it took. */
async function closedLoop(fn: () => Promise<unknown>, durationMs: number, concurrency: number): Promise<{ latencies: number[]; elapsedMs: number; errors: number }> {
  const latencies: number[] = [];
  let errors = 0;
  const started = performance.now();
  const until = started + durationMs;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < until) {
        const t = performance.now();
        try {
          await fn();
          latencies.push(performance.now() - t);
        } catch {
          errors++;
        }
      }
    }),
  );
  return { latencies, elapsedMs: performance.now() - started, errors };
}

/**
 * Micro-batched vs one run per request, through the service's inference workers
 * and batcher with its default limits. The two alternate in short rounds, so load
 * from other processes on the machine falls on both alike.
 */
async function batching(rowsPerRequest: number): Promise<{ scenarios: ScenarioResult[]; ratios: Ratio[] }> {
  const models = await Promise.all(["ranker-gbdt", "ranker-mlp"].map((name) => WorkerModel.load(join(ROOT, "models", name, "v1"), 1)));
  try {
    const rows = Float32Array.from({ length: rowsPerRequest * 14 }, (_, i) => ((i * 7919) % 101) / 100);
    const config = loadPredictionConfig({});
    const options = {
      width: 14,
      maxRows: config.BATCH_MAX_ROWS,
      maxWaitMs: config.BATCH_MAX_WAIT_MS,
      p99TargetMs: config.BATCH_P99_TARGET_MS,
      maxInFlight: config.BATCH_MAX_IN_FLIGHT,
    };
    const batchers = models.map((model) => new MicroBatcher((features, n) => model.score(features, n), options));
    const variants = {
      single: () => Promise.all(models.map((m) => m.score(rows, rowsPerRequest))),
      batched: () => Promise.all(batchers.map((b) => b.submit(rows, rowsPerRequest))),
    };
    const collected = { single: { latencies: [] as number[], elapsedMs: 0, errors: 0 }, batched: { latencies: [] as number[], elapsedMs: 0, errors: 0 } };
    const rounds = 4;
    for (const fn of Object.values(variants)) await closedLoop(fn, 500, 64);
    for (let round = 0; round < rounds; round++) {
      for (const [name, fn] of Object.entries(variants) as [keyof typeof variants, () => Promise<unknown>][]) {
        const result = await closedLoop(fn, durationMs / rounds, 64);
        collected[name].latencies.push(...result.latencies);
        collected[name].elapsedMs += result.elapsedMs;
        collected[name].errors += result.errors;
      }
    }
    const extra = { concurrency: 64, rows_per_request: rowsPerRequest };
    const single = summarize(`ensemble, 1 run per request, ${rowsPerRequest} rows`, collected.single.latencies, collected.single.elapsedMs, collected.single.errors, extra);
    const batched = summarize(`ensemble, micro-batched, ${rowsPerRequest} rows`, collected.batched.latencies, collected.batched.elapsedMs, collected.batched.errors, {
      ...extra,
      final_max_rows: batchers.map((b) => b.maxRows),
    });
    const speedup = batched.qps / single.qps;
    const p99 = batched.p99_ms / single.p99_ms;
    return {
      scenarios: [single, batched],
      ratios: [
        ratio(`micro-batching QPS / 1 run per request (${rowsPerRequest} rows, c=64)`, speedup, ">= 3", speedup >= 3),
        ratio(`micro-batching p99 / 1 run per request (${rowsPerRequest} rows, c=64)`, p99, "<= 1.5", p99 <= 1.5),
      ],
    };
  } finally {
    await Promise.all(models.map((m) => m.release()));
  }
}

const suite: BenchSuite = {
  name: "prediction",
  async run() {
    const scenarios: ScenarioResult[] = [];
    const ratios: Ratio[] = [];

    for (const rowsPerRequest of [200, 10]) {
      const result = await batching(rowsPerRequest);
      scenarios.push(...result.scenarios);
      ratios.push(...result.ratios);
    }

    const redis = await startRedis();
    const dataDir = mkdtempSync(join(tmpdir(), "recsys-prediction-bench-"));
    const processes: Started[] = [];
    try {
      const common = { REDIS_URL: redis.url, LOG_LEVEL: "warn", ADMIN_TOKEN };
      const experiment = await startService(processes, "experiment", common);
      const feature = await startService(processes, "feature", common);
      const retrieval = await startService(processes, "retrieval", { ...common, RETRIEVAL_DATA_DIR: dataDir });
      await seedBatchFeatures(createServiceClient(FeatureService, feature));
      const upstreams = { FEATURE_ADDR: feature, RETRIEVAL_ADDR: retrieval, EXPERIMENT_ADDR: experiment, DEFAULT_DEADLINE_MS: "2000" };
      const prediction = await startService(processes, "prediction", { ...common, ...upstreams });
      const client = createServiceClient(PredictionService, prediction);
      const byActivity = usersByActivity();
      const context = { device: Device.MOBILE };

      // 1. Zipf(1.1) users, the most active the most requested: warm-up, then the hit rate of
      //    what follows; then again from an empty cache after `npm run precompute` wrote the
      //    1000 most active users' predictions, as an operator would run it.
      const zipf = zipfSampler(byActivity.length, 1.1, 42);
      const zipfPhase = async (name: string) => {
        const levels = new Map<CacheLevel, number>();
        const call = async (record: boolean) => {
          const response = await client.predict({ userId: byActivity[zipf()]!, context }, { timeoutMs: 2000 });
          if (record) levels.set(response.metadata!.cacheLevel, (levels.get(response.metadata!.cacheLevel) ?? 0) + 1);
        };
        await measure(`${name} warm-up`, () => call(false), { durationMs, concurrency: 16 });
        const run = await measure(name, () => call(true), { durationMs, concurrency: 16 });
        const total = [...levels.values()].reduce((a, b) => a + b, 0);
        const [l1, l2] = [(levels.get(CacheLevel.L1) ?? 0) / total, (levels.get(CacheLevel.L2) ?? 0) / total];
        scenarios.push({ ...run, users: byActivity.length, l1_hit_rate: l1, l2_hit_rate: l2, hit_rate: l1 + l2 });
        return { run, hitRate: l1 + l2 };
      };
      const cold = await zipfPhase("Predict, Zipf(1.1) users after warm-up");
      await client.invalidateCache({ all: true }, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
      const job = await startProcess("node", ["--import", "tsx", "services/prediction/precompute.ts", "--users", "1000", "--devices", "mobile"], {
        env: { ...common, ...upstreams },
      });
      if ((await job.exited) !== 0) throw new Error(`precompute failed:\n${job.output()}`);
      const precomputed = await zipfPhase("Predict, Zipf(1.1) users after precompute (top 1000) + warm-up");
      ratios.push(
        ratio("Zipf(1.1) combined L1+L2 hit rate after warm-up", cold.hitRate, ">= 0.9", cold.hitRate >= 0.9),
        ratio("Zipf(1.1) combined L1+L2 hit rate after precompute + warm-up", precomputed.hitRate, ">= 0.9", precomputed.hitRate >= 0.9),
      );

      // 3. Full pipeline vs cached, same concurrency.
      let next = 0;
      const full = await measure(
        "Predict, full pipeline (cache bypassed)",
        () => client.predict({ userId: byActivity[next++ % byActivity.length]!, context, bypassCache: true }, { timeoutMs: 2000 }),
        { durationMs, concurrency: 8, warmupMs: 1000 },
      );
      const hot = byActivity.slice(0, 50);
      await Promise.all(hot.map((userId) => client.predict({ userId, context })));
      const cached = await measure("Predict, cached (L1)", (i) => client.predict({ userId: hot[i % hot.length]!, context }, { timeoutMs: 2000 }), {
        durationMs,
        concurrency: 8,
        warmupMs: 1000,
      });
      scenarios.push(full, cached);
      const errors = [cold.run, precomputed.run, full, cached].reduce((sum, s) => sum + s.errors, 0);
      ratios.push(
        ratio("cached Predict QPS / full-pipeline QPS", cached.qps / full.qps, "informational", true),
        ratio("full-pipeline Predict p99 / p50", full.p99_ms / full.p50_ms, "informational", true),
        ratio("Predict errors (all scenarios)", errors, "0", errors === 0),
      );
      return { scenarios, ratios };
    } finally {
      await Promise.all([...processes].reverse().map((p) => p.stop()));
      await redis.stop();
      rmSync(dataDir, { recursive: true, force: true });
    }
  },
};
export default suite;
