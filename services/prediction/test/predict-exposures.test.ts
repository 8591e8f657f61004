// Predict records the exposures of the experiment variants it serves: a real prediction
// server, a real experiment service, a real Redis. The experiment service's GetResults
// is the judge, so what is tested is the whole path (Predict -> recorder -> RecordExposures).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ExperimentService, ExperimentStatus } from "../../../gen/recsys/experiment/v1/experiment_pb.js";
import { PredictionService } from "../../../gen/recsys/prediction/v1/prediction_pb.js";
import { copyModels } from "./feature-fixtures.js";
import { startTestRedis, type TestRedisTarget } from "../../../test/support/redis-cluster.js";
import { startExperimentService } from "../../experiment/server.js";
import { createServiceClient, registry, type RunningServer } from "../../kit/index.js";
import { startPredictionService } from "../server.js";

const TOKEN = "test-admin-token-predict-exposures";
const admin = { headers: { authorization: `Bearer ${TOKEN}` } };
const EXPERIMENT = "exposed-weights";
/** Exposures arrive in the background: wait for them, never for a fixed time. */
const EVENTUALLY = { timeout: 30_000, interval: 100 };
const GENEROUS_MS = 20_000;

async function exposuresRecorded(): Promise<number> {
  const values = (await registry.getSingleMetric("recsys_prediction_exposures_total")?.get())?.values ?? [];
  return values.filter((v) => v.labels.result === "recorded").reduce((sum, v) => sum + v.value, 0);
}

describe("Predict records an exposure for every answer that served an experiment variant", () => {
  let redis: TestRedisTarget;
  let dir: string;
  let experiment: RunningServer;
  let prediction: RunningServer;

  beforeAll(async () => {
    redis = await startTestRedis();
    dir = mkdtempSync(join(tmpdir(), "recsys-predict-exposures-"));
    copyModels(dir);
    const common = { GRPC_PORT: "0", LOG_LEVEL: "silent", ADMIN_TOKEN: TOKEN, REDIS_COMMAND_TIMEOUT_MS: "5000", ...redis.env };
    experiment = await startExperimentService(common);
    // Running before prediction starts: the in-process assigner (or, until it has loaded, the Assign RPC) knows it from the first call.
    await createServiceClient(ExperimentService, `127.0.0.1:${experiment.port}`).createExperiment(
      {
        experiment: {
          id: EXPERIMENT,
          layer: "ranking",
          status: ExperimentStatus.RUNNING,
          primaryMetric: "click",
          variants: [
            { name: "control", allocation: 0.5, config: { ensembleWeights: { "ranker-gbdt": 0.5, "ranker-mlp": 0.5 } } },
            { name: "treatment", allocation: 0.5, config: { ensembleWeights: { "ranker-mlp-int8": 1 } } },
          ],
        },
      },
      admin,
    );
    // No feature or retrieval service: answers come from a lower rung, which serves the variant all the same.
    prediction = await startPredictionService({
      ...common,
      MODELS_DIR: join(dir, "models"),
      MODELS_POLL_MS: "0",
      EXPERIMENT_ADDR: `127.0.0.1:${experiment.port}`,
      DEFAULT_DEADLINE_MS: String(GENEROUS_MS),
      REDIS_TIMEOUT_MS: "2000",
    });
  });

  afterAll(async () => {
    await prediction?.shutdown();
    await experiment?.shutdown();
    await redis?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("N Predicts for N distinct users: GetResults counts N exposures of N users; none for the default variant", async () => {
    const N = 60;
    const client = createServiceClient(PredictionService, `127.0.0.1:${prediction.port}`);
    const experiments = createServiceClient(ExperimentService, `127.0.0.1:${experiment.port}`);
    const recordedBefore = await exposuresRecorded();

    const served = new Map<string, number>();
    for (let i = 0; i < N; i++) {
      const { metadata } = await client.predict({ userId: `exposed-${i}`, numPredictions: 5 }, { timeoutMs: GENEROUS_MS });
      expect(metadata!.experimentId).toBe(EXPERIMENT);
      served.set(metadata!.variant, (served.get(metadata!.variant) ?? 0) + 1);
    }
    // Answers that served no experiment (an explicit built-in variant) record nothing.
    for (let i = 0; i < 5; i++) {
      const { metadata } = await client.predict({ userId: `exposed-${i}`, modelVariant: "default" }, { timeoutMs: GENEROUS_MS });
      expect(metadata!.experimentId).toBe("");
    }

    const expected = [...served].map(([variant, count]) => [variant, count, count]).sort();
    const results = async () => {
      const { variants } = await experiments.getResults({ experimentId: EXPERIMENT });
      return variants.filter((v) => v.exposures > 0n).map((v) => [v.variant, Number(v.exposures), Number(v.users)]).sort();
    };
    await expect.poll(results, EVENTUALLY).toEqual(expected);
    await expect.poll(exposuresRecorded, EVENTUALLY).toBe(recordedBefore + N);

    // The same users served again (now from the cache): more exposures, no more users.
    const again = 10;
    for (let i = 0; i < again; i++) await client.predict({ userId: `exposed-${i}`, numPredictions: 5 }, { timeoutMs: GENEROUS_MS });
    await expect.poll(async () => (await results()).reduce((sum, [, exposures]) => sum + Number(exposures), 0), EVENTUALLY).toBe(N + again);
    expect((await results()).reduce((sum, [, , users]) => sum + Number(users), 0)).toBe(N);
  });
});
