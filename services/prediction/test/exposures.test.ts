// The exposure recorder against a real experiment service on a real Redis: what it
// records shows up in GetResults exactly once, what it cannot take it drops and counts.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ExperimentService } from "../../../gen/recsys/experiment/v1/experiment_pb.js";
import { freePort } from "../../../scripts/lib/processes.js";
import { startTestRedis, type TestRedisTarget } from "../../../test/support/redis-cluster.js";
import { startExperimentService } from "../../experiment/server.js";
import { experimentInit } from "../../experiment/test/helpers.js";
import { createLogger, createServiceClient, registry, type RunningServer } from "../../kit/index.js";
import { ExposureRecorder, type ExposureRecorderOptions } from "../exposures.js";

const TOKEN = "test-admin-token-exposures";
const log = createLogger("exposures-test", "silent");

async function counter(name: string, labels: Record<string, string> = {}): Promise<number> {
  const metric = await registry.getSingleMetric(name)?.get();
  const matching = metric?.values.filter((v) => Object.entries(labels).every(([k, value]) => v.labels[k] === value)) ?? [];
  return matching.reduce((sum, v) => sum + v.value, 0);
}

describe("exposure recorder", () => {
  let redis: TestRedisTarget;
  let server: RunningServer;
  let client: ReturnType<typeof createServiceClient<typeof ExperimentService>>;
  const recorder = (overrides: Partial<ExposureRecorderOptions> = {}) =>
    new ExposureRecorder({ client, maxQueued: 10_000, batchSize: 64, flushIntervalMs: 20, callTimeoutMs: 10_000, maxAttempts: 5, log, ...overrides });

  beforeAll(async () => {
    redis = await startTestRedis();
    server = await startExperimentService({ GRPC_PORT: "0", LOG_LEVEL: "silent", ...redis.env, ADMIN_TOKEN: TOKEN });
    client = createServiceClient(ExperimentService, `127.0.0.1:${server.port}`);
    const admin = { headers: { authorization: `Bearer ${TOKEN}` } };
    for (const id of ["served", "refusals"]) await client.createExperiment({ experiment: experimentInit(id) }, admin);
  });
  afterAll(async () => {
    await server?.shutdown();
    await redis?.stop();
  });

  it("N recorded exposures are N distinct exposures of N users in GetResults", async () => {
    const N = 500;
    const sentBefore = await counter("recsys_prediction_exposures_total", { result: "recorded" });
    const exposures = recorder();
    for (let i = 0; i < N; i++) exposures.record({ experimentId: "served", variant: i % 2 ? "treatment" : "control", userId: `user-${i}` });
    await exposures.flush();
    const { variants } = await client.getResults({ experimentId: "served" });
    const byVariant = Object.fromEntries(variants.map((v) => [v.variant, { exposures: Number(v.exposures), users: Number(v.users) }]));
    expect(byVariant).toEqual({ control: { exposures: N / 2, users: N / 2 }, treatment: { exposures: N / 2, users: N / 2 } });
    expect((await counter("recsys_prediction_exposures_total", { result: "recorded" })) - sentBefore).toBe(N);

    // The same users served again: more exposure events, no more users.
    for (let i = 0; i < 10; i++) exposures.record({ experimentId: "served", variant: i % 2 ? "treatment" : "control", userId: `user-${i}` });
    await exposures.close(30_000);
    const again = await client.getResults({ experimentId: "served" });
    expect(again.variants.map((v) => [v.variant, Number(v.exposures), Number(v.users)])).toEqual([
      ["control", N / 2 + 5, N / 2],
      ["treatment", N / 2 + 5, N / 2],
    ]);
  });

  it("drops only an exposure the experiment service refuses, and counts it", async () => {
    const refusedBefore = await counter("recsys_prediction_exposures_dropped_total", { reason: "refused" });
    const exposures = recorder();
    for (let i = 0; i < 10; i++) exposures.record({ experimentId: "refusals", variant: i === 3 ? "no-such-variant" : "control", userId: `r-${i}` });
    exposures.record({ experimentId: "", variant: "control", userId: "not-in-an-experiment" });
    await exposures.flush();
    const { variants } = await client.getResults({ experimentId: "refusals" });
    expect(variants.find((v) => v.variant === "control")?.exposures).toBe(9n);
    expect((await counter("recsys_prediction_exposures_dropped_total", { reason: "refused" })) - refusedBefore).toBe(1);
  });

  it("never waits: with the experiment service unreachable, a full queue drops new exposures and counts them", async () => {
    const nowhere = createServiceClient(ExperimentService, `127.0.0.1:${await freePort()}`);
    const droppedBefore = await counter("recsys_prediction_exposures_dropped_total", { reason: "queue_full" });
    const failedBefore = await counter("recsys_prediction_exposures_dropped_total", { reason: "send_failed" });
    const exposures = recorder({ client: nowhere, maxQueued: 100, batchSize: 1_000, flushIntervalMs: 10, maxAttempts: 2 });
    // One synchronous burst: record() returns nothing to wait on, so no send can start within it.
    for (let i = 0; i < 250; i++) expect(exposures.record({ experimentId: "served", variant: "control", userId: `burst-${i}` })).toBeUndefined();
    expect(await counter("recsys_prediction_exposures_queued")).toBe(100);
    expect((await counter("recsys_prediction_exposures_dropped_total", { reason: "queue_full" })) - droppedBefore).toBe(150);
    // The queued ones are tried, then given up and counted: the queue does not stay full.
    await exposures.flush();
    expect((await counter("recsys_prediction_exposures_dropped_total", { reason: "send_failed" })) - failedBefore).toBe(100);
    expect(await counter("recsys_prediction_exposures_queued")).toBe(0);
  });
});
