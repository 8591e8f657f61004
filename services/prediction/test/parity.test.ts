import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Device } from "../../../gen/recsys/common/v1/common_pb.js";
import { FallbackLevel, PredictionService } from "../../../gen/recsys/prediction/v1/prediction_pb.js";
import { FeatureService } from "../../../gen/recsys/feature/v1/feature_pb.js";
import { ROOT } from "../../../scripts/lib/tools.js";
import { startRedis, type TestRedis } from "../../../test/support/redis.js";
import { startFeatureService } from "../../feature/server.js";
import { createServiceClient, type RunningServer } from "../../kit/index.js";
import { startRetrievalService } from "../../retrieval/server.js";
import { startPredictionService } from "../server.js";
import { copyModels, seedBatchFeatures } from "./feature-fixtures.js";

/**
 * Ranking parity: full predictions (cache bypassed) for fixed users, context and
 * models, against the answers the pipeline gave before the payload and client
 * changes of issue 16 (recorded in parity-golden.json). The same items in the same
 * order and scores within a float tolerance; two items whose recorded scores are
 * closer than the tolerance may trade places. PARITY_RECORD=1 records the file
 * again (after a deliberate change of the answers, or new model versions).
 */
const GOLDEN = join(import.meta.dirname, "parity-golden.json");
const RECORD = process.env.PARITY_RECORD === "1";
const SCORE_TOLERANCE = 1e-4;
const USERS = 12;
const NUM = 20;
const context = { device: Device.MOBILE, timestamp: timestampFromMs(Date.parse("2026-03-02T10:30:00Z")) };

interface Answer {
  userId: string;
  items: { itemId: string; score: number }[];
}
interface Golden {
  modelVersions: Record<string, string>;
  answers: Answer[];
}

/** Differences between an answer and the recorded one, as readable lines; empty when they agree. */
function differences(recorded: Answer, answer: Answer): string[] {
  const problems: string[] = [];
  if (answer.items.length !== recorded.items.length) problems.push(`${answer.items.length} items, recorded ${recorded.items.length}`);
  const scoreOf = new Map(answer.items.map((item) => [item.itemId, item.score]));
  recorded.items.forEach((want, rank) => {
    const got = answer.items[rank];
    const score = scoreOf.get(want.itemId);
    if (score === undefined) problems.push(`rank ${rank + 1}: ${want.itemId} is missing`);
    else if (Math.abs(score - want.score) > SCORE_TOLERANCE) problems.push(`${want.itemId}: score ${score}, recorded ${want.score}`);
    else if (got && got.itemId !== want.itemId && Math.abs(got.score - want.score) > SCORE_TOLERANCE) {
      problems.push(`rank ${rank + 1}: ${got.itemId}, recorded ${want.itemId}`);
    }
  });
  return problems;
}

describe("ranking parity with the recorded pipeline", () => {
  let redis: TestRedis;
  let dir: string;
  const servers: RunningServer[] = [];
  let predictionAddress = "";

  beforeAll(async () => {
    redis = await startRedis();
    dir = mkdtempSync(join(tmpdir(), "recsys-parity-"));
    const models = copyModels(dir);
    const common = { GRPC_PORT: "0", LOG_LEVEL: "silent", REDIS_URL: redis.url, REDIS_COMMAND_TIMEOUT_MS: "5000" };
    const feature = await startFeatureService({ ...common, CATALOG_PATH: join(models, "catalog", "v1", "items.jsonl") });
    servers.push(feature);
    const retrieval = await startRetrievalService({ ...common, REDIS_TIMEOUT_MS: "5000", MODELS_DIR: models, RETRIEVAL_DATA_DIR: join(dir, "retrieval") });
    servers.push(retrieval);
    await retrieval.ready;
    await seedBatchFeatures(createServiceClient(FeatureService, `127.0.0.1:${feature.port}`), models);
    const prediction = await startPredictionService({
      ...common,
      MODELS_DIR: models,
      MODELS_POLL_MS: "0",
      FEATURE_ADDR: `127.0.0.1:${feature.port}`,
      RETRIEVAL_ADDR: `127.0.0.1:${retrieval.port}`,
      DEFAULT_DEADLINE_MS: "20000",
      REDIS_TIMEOUT_MS: "2000",
    });
    servers.push(prediction);
    predictionAddress = `127.0.0.1:${prediction.port}`;
  });

  afterAll(async () => {
    await Promise.all([...servers].reverse().map((s) => s.shutdown()));
    await redis?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("ranks fixed users as the recorded pipeline did: same top-N, scores within 1e-4", async () => {
    const client = createServiceClient(PredictionService, predictionAddress);
    const userIds = readFileSync(join(ROOT, "models", "embeddings", "v1", "user_ids.txt"), "utf8").trim().split("\n");
    const chosen = Array.from({ length: USERS }, (_, i) => userIds[Math.floor((i * userIds.length) / USERS)]!);
    let modelVersions: Record<string, string> = {};
    const answers: Answer[] = [];
    for (const userId of chosen) {
      const response = await client.predict({ userId, context, numPredictions: NUM, bypassCache: true }, { timeoutMs: 20_000 });
      expect(response.metadata?.fallbackLevel, `${userId}: ${response.metadata?.fallbackReason}`).toBe(FallbackLevel.PRIMARY);
      modelVersions = response.metadata!.modelVersions;
      answers.push({ userId, items: response.predictions.map((p) => ({ itemId: p.itemId, score: p.score })) });
    }
    if (RECORD) {
      writeFileSync(GOLDEN, `${JSON.stringify({ modelVersions, answers } satisfies Golden, null, 1)}\n`);
      return;
    }
    expect(existsSync(GOLDEN), "no recorded answers: PARITY_RECORD=1 records them").toBe(true);
    const golden = JSON.parse(readFileSync(GOLDEN, "utf8")) as Golden;
    expect(modelVersions, "the models differ from the recorded ones: record again with PARITY_RECORD=1 if that is deliberate").toEqual(golden.modelVersions);
    expect(answers.map((a) => a.userId)).toEqual(golden.answers.map((a) => a.userId));
    const problems = golden.answers.flatMap((recorded, i) => differences(recorded, answers[i]!).map((p) => `${recorded.userId}: ${p}`));
    expect(problems).toEqual([]);
  });
});
