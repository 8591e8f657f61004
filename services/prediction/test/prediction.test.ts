import { cpSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { BadRequestSchema, ErrorInfoSchema } from "../../../gen/google/rpc/error_details_pb.js";
import { Health, HealthCheckResponse_ServingStatus } from "../../../gen/grpc/health/v1/health_pb.js";
import { Device, Priority, RequestContextSchema } from "../../../gen/recsys/common/v1/common_pb.js";
import { ExperimentService, ExperimentStatus } from "../../../gen/recsys/experiment/v1/experiment_pb.js";
import { FeatureService } from "../../../gen/recsys/feature/v1/feature_pb.js";
import { CacheLevel, FallbackLevel, PredictionService, type PredictRequest } from "../../../gen/recsys/prediction/v1/prediction_pb.js";
import { RetrievalService } from "../../../gen/recsys/retrieval/v1/retrieval_pb.js";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import type { PredictRequestSchema } from "../../../gen/recsys/prediction/v1/prediction_pb.js";
import { freePort } from "../../../scripts/lib/processes.js";
import { startTestRedis, type TestRedisTarget } from "../../../test/support/redis-cluster.js";
import { startExperimentService } from "../../experiment/server.js";
import { startFeatureService } from "../../feature/server.js";
import { Code, ConnectError, createServiceClient, registry, type RunningServer } from "../../kit/index.js";
import { startRetrievalService } from "../../retrieval/server.js";
import { loadPredictionConfig } from "../config.js";
import { precompute } from "../precompute.js";
import { startPredictionService } from "../server.js";
import { BATCH_UNSUPPORTED_MS, CandidateReader } from "../candidates.js";
import { startFaultProxy, type FaultProxy } from "./fault-proxy.js";
import { clickPopularItems, copyModels, popularFixture, seedBatchFeatures, type PopularFixture } from "./feature-fixtures.js";

const TOKEN = "test-admin-token-123";
const admin = { headers: { authorization: `Bearer ${TOKEN}` } };
const mobile = { device: Device.MOBILE, timestamp: timestampFromMs(Date.parse("2026-03-02T10:30:00Z")) };
const desktop = { ...mobile, device: Device.DESKTOP };
/**
 * Deadlines a loaded machine meets many times over: a test about a rung breaks what
 * that rung guards, it does not race the clock. Tests about deadlines set their own.
 */
const GENEROUS_MS = 20_000;
/** How long to wait for something that happens in the background (pub/sub, refreshes). */
const EVENTUALLY = { timeout: 20_000, interval: 50 };

/** A counter's value as /metrics shows it (the process registry every in-process server reports to). */
async function metricValue(name: string, labels: Record<string, string>): Promise<number> {
  const values = (await registry.getSingleMetric(name)?.get())?.values ?? [];
  return values.filter((v) => Object.entries(labels).every(([k, value]) => v.labels[k] === value)).reduce((sum, v) => sum + v.value, 0);
}

async function failure(call: Promise<unknown>): Promise<ConnectError> {
  try {
    await call;
  } catch (err) {
    return ConnectError.from(err);
  }
  throw new Error("expected the call to fail");
}

/** The field an INVALID_ARGUMENT names: protovalidate's BadRequest, or the service's ErrorInfo. */
function invalidField(err: ConnectError): string | undefined {
  return err.findDetails(BadRequestSchema)[0]?.fieldViolations[0]?.field ?? err.findDetails(ErrorInfoSchema)[0]?.metadata.field;
}

describe("prediction service through real feature, retrieval and experiment servers and Redis", () => {
  let redis: TestRedisTarget;
  let dir: string;
  const servers: RunningServer[] = [];
  let featureProxy: FaultProxy;
  let retrievalProxy: FaultProxy;
  let prediction: RunningServer;
  let client: Client<typeof PredictionService>;
  let experiments: Client<typeof ExperimentService>;
  let popular: PopularFixture;

  const predict = (request: MessageInitShape<typeof PredictRequestSchema>, timeoutMs = GENEROUS_MS) => client.predict(request, { timeoutMs });
  const start = async (env: Record<string, string | undefined> = {}) => {
    const server = await startPredictionService({
      GRPC_PORT: "0",
      LOG_LEVEL: "silent",
      ADMIN_TOKEN: TOKEN,
      ...redis.env,
      MODELS_DIR: join(dir, "models"),
      MODELS_POLL_MS: "0",
      FEATURE_ADDR: featureProxy.address,
      RETRIEVAL_ADDR: retrievalProxy.address,
      EXPERIMENT_ADDR: `127.0.0.1:${servers[0]!.port}`,
      DEFAULT_DEADLINE_MS: String(GENEROUS_MS),
      POPULAR_REFRESH_MS: "1000",
      // A Redis reply slower than this counts as a cache miss; these tests are about what is cached, not Redis's speed.
      REDIS_TIMEOUT_MS: "2000",
      REDIS_COMMAND_TIMEOUT_MS: "5000",
      ...env,
    });
    servers.push(server);
    return server;
  };

  beforeAll(async () => {
    redis = await startTestRedis();
    dir = mkdtempSync(join(tmpdir(), "recsys-prediction-"));
    // A copy of the models, so the hot-swap test can add a version, and every server and
    // fixture reads one generation even while the training pipeline rewrites models/.
    const models = copyModels(dir);
    // Redis budgets a loaded machine meets: these servers are the stage, not what is tested.
    const common = { GRPC_PORT: "0", LOG_LEVEL: "silent", ...redis.env, ADMIN_TOKEN: TOKEN, REDIS_COMMAND_TIMEOUT_MS: "5000" };
    servers.push(await startExperimentService(common));
    const feature = await startFeatureService({ ...common, CATALOG_PATH: join(models, "catalog", "v1", "items.jsonl"), POPULAR_PUBLISH_INTERVAL_MS: "1000" });
    servers.push(feature);
    const retrieval = await startRetrievalService({ ...common, REDIS_TIMEOUT_MS: "5000", MODELS_DIR: models, RETRIEVAL_DATA_DIR: join(dir, "retrieval") });
    servers.push(retrieval);
    await retrieval.ready;
    featureProxy = await startFaultProxy(FeatureService, `127.0.0.1:${feature.port}`);
    retrievalProxy = await startFaultProxy(RetrievalService, `127.0.0.1:${retrieval.port}`);

    const features = createServiceClient(FeatureService, `127.0.0.1:${feature.port}`);
    await seedBatchFeatures(features, models);
    // Popular lists as the feature service's aggregator publishes them from events; every
    // prediction instance then starts with its copy of them.
    popular = popularFixture(models);
    await clickPopularItems(features, popular);
    const lists = redis.client();
    await vi.waitFor(async () => {
      expect(await lists.zrevrange("recsys:popular:all", 0, 5)).toEqual([...popular.otherItems, ...popular.favouriteItems]);
      expect(await lists.zrevrange(`recsys:popular:${popular.favourite}`, 0, 2)).toEqual(popular.favouriteItems);
    }, EVENTUALLY);
    lists.disconnect();
    experiments = createServiceClient(ExperimentService, `127.0.0.1:${servers[0]!.port}`);

    prediction = await start();
    client = createServiceClient(PredictionService, `127.0.0.1:${prediction.port}`);
  });

  afterAll(async () => {
    await Promise.all([...servers].reverse().map((s) => s.shutdown()));
    await Promise.all([featureProxy?.stop(), retrievalProxy?.stop()]);
    await redis?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("reports SERVING once the models are loaded and warmed", async () => {
    const health = createClient(Health, createGrpcTransport({ baseUrl: `http://127.0.0.1:${prediction.port}` }));
    expect((await health.check({ service: "recsys.prediction.v1.PredictionService" })).status).toBe(HealthCheckResponse_ServingStatus.SERVING);
  });

  it("answers a personalised ranking that differs by user and by variant, then serves it from L1", async () => {
    let serviceVersion: string | null = null;
    const first = await client.predict({ userId: "u000001", context: mobile, numPredictions: 10 }, { onHeader: (h) => (serviceVersion = h.get("x-service-version")) });
    expect(serviceVersion).toBe("v1");
    expect(first.metadata).toMatchObject({ fallbackLevel: FallbackLevel.PRIMARY, cacheLevel: CacheLevel.MISS, variant: "default" });
    expect(first.metadata!.traceId).toMatch(/^[0-9a-f]{32}$/);
    expect(first.metadata!.modelVersions).toMatchObject({ "ranker-gbdt": "v1", "ranker-mlp": "v1", embeddings: "v1" });
    expect(first.metadata!.stages.map((s) => s.stage)).toEqual(expect.arrayContaining(["assign", "cache", "features", "candidates", "item_features", "rank"]));
    expect(first.metadata!.featureAgeSeconds).toBeGreaterThan(0);
    expect(first.predictions).toHaveLength(10);
    expect(first.predictions.map((p) => p.rank)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    const scores = first.predictions.map((p) => p.score);
    expect([...scores].sort((a, b) => b - a)).toEqual(scores);
    const perCategory = new Map<string, number>();
    for (const p of first.predictions) perCategory.set(p.category, (perCategory.get(p.category) ?? 0) + 1);
    expect(Math.max(...perCategory.values())).toBeLessThanOrEqual(3);

    const other = await predict({ userId: "u000002", context: mobile, numPredictions: 10 });
    expect(other.metadata!.fallbackLevel).toBe(FallbackLevel.PRIMARY);
    expect(other.predictions.map((p) => p.itemId)).not.toEqual(first.predictions.map((p) => p.itemId));

    const gbdt = await predict({ userId: "u000001", context: mobile, numPredictions: 10, modelVariant: "gbdt-only" });
    const mlp = await predict({ userId: "u000001", context: mobile, numPredictions: 10, modelVariant: "mlp-heavy" });
    expect(gbdt.metadata).toMatchObject({ variant: "gbdt-only", modelVersions: { "ranker-gbdt": "v1" } });
    expect(mlp.metadata!.variant).toBe("mlp-heavy");
    expect(gbdt.predictions.map((p) => p.score)).not.toEqual(mlp.predictions.map((p) => p.score));

    const again = await predict({ userId: "u000001", context: mobile, numPredictions: 5 });
    expect(again.metadata).toMatchObject({ cacheLevel: CacheLevel.L1, fallbackLevel: FallbackLevel.PRIMARY });
    expect(again.predictions.map((p) => p.itemId)).toEqual(first.predictions.slice(0, 5).map((p) => p.itemId));
  });

  it("answers bad input with INVALID_ARGUMENT naming the field", async () => {
    const cases: [MessageInitShape<typeof PredictRequestSchema>, string][] = [
      [{ userId: "" }, "user_id"],
      [{ userId: "   " }, "user_id"],
      [{ userId: "u000001", numPredictions: 0 }, "num_predictions"],
      [{ userId: "u000001", numPredictions: 10_001 }, "num_predictions"],
      [{ userId: "u000001", modelVariant: "turbo" }, "model_variant"],
      [{ userId: "u000001", modelVariant: "no-such-experiment/treatment" }, "model_variant"],
      [{ userId: "u000001", context: { timeZone: "Mars/Olympus" } }, "context.time_zone"],
    ];
    for (const [request, field] of cases) {
      const err = await failure(predict(request));
      expect(err.code, JSON.stringify(request)).toBe(Code.InvalidArgument);
      expect(invalidField(err), JSON.stringify(request)).toBe(field);
    }
    const batch = await failure(client.predictBatch({ requests: [{ userId: "u000001" }, { userId: "u000002", modelVariant: "turbo" }] }));
    expect(invalidField(batch)).toBe("requests[1].model_variant");
  });

  it("follows the experiment a user is assigned to, and accepts an explicit experiment variant", async () => {
    await experiments.createExperiment(
      {
        experiment: {
          id: "ranker-weights",
          layer: "ranking",
          status: ExperimentStatus.RUNNING,
          variants: [
            { name: "control", allocation: 0.5, config: { ensembleWeights: { "ranker-gbdt": 0.5, "ranker-mlp": 0.5 } } },
            { name: "treatment", allocation: 0.5, config: { ensembleWeights: { "ranker-mlp-int8": 1 }, params: { max_per_category: "2" } } },
          ],
        },
      },
      admin,
    );
    // The in-process assigner hears of the new experiment through Redis pub/sub.
    await expect
      .poll(async () => (await predict({ userId: "u000010", context: mobile, bypassCache: true })).metadata!.experimentId, EVENTUALLY)
      .toBe("ranker-weights");
    const seen = new Set<string>();
    for (let u = 10; u < 30; u++) seen.add((await predict({ userId: `u0000${u}`, context: mobile, bypassCache: true })).metadata!.variant);
    expect(seen).toEqual(new Set(["control", "treatment"]));

    const forced = await predict({ userId: "u000010", context: mobile, modelVariant: "ranker-weights/treatment", numPredictions: 20 });
    expect(forced.metadata).toMatchObject({ experimentId: "ranker-weights", variant: "treatment", modelVersions: { "ranker-mlp-int8": "v1" } });
    const perCategory = new Map<string, number>();
    for (const p of forced.predictions) perCategory.set(p.category, (perCategory.get(p.category) ?? 0) + 1);
    expect(Math.max(...perCategory.values())).toBeLessThanOrEqual(2);
    const unknown = await failure(predict({ userId: "u000010", modelVariant: "ranker-weights/nope" }));
    expect(invalidField(unknown)).toBe("model_variant");
  });

  it("shares L2 between instances, and InvalidateCache (admin) drops L1 and L2 everywhere", async () => {
    const request = { userId: "u000003", context: mobile, modelVariant: "default" };
    expect((await predict(request)).metadata!.cacheLevel).toBe(CacheLevel.MISS);
    const second = await start();
    const secondClient = createServiceClient(PredictionService, `127.0.0.1:${second.port}`);
    expect((await secondClient.predict(request)).metadata!.cacheLevel).toBe(CacheLevel.L2);
    expect((await secondClient.predict(request)).metadata!.cacheLevel).toBe(CacheLevel.L1);

    expect((await failure(client.invalidateCache({ userIds: ["u000003"] }))).code).toBe(Code.Unauthenticated);
    expect(invalidField(await failure(client.invalidateCache({}, admin)))).toBe("user_ids");
    const dropped = await client.invalidateCache({ userIds: ["u000003"] }, admin);
    expect(dropped).toMatchObject({ l1Removed: 1n, l2Removed: 1n });
    await expect.poll(async () => (await secondClient.predict(request)).metadata!.cacheLevel, EVENTUALLY).toBe(CacheLevel.MISS);
    await second.shutdown();
  });

  it("answers PredictBatch in request order", async () => {
    const { responses } = await client.predictBatch({
      requests: [
        { userId: "u000004", context: mobile, numPredictions: 3, modelVariant: "gbdt-only" },
        { userId: "u000005", context: desktop, numPredictions: 4, modelVariant: "int8" },
      ],
    });
    expect(responses.map((r) => r.predictions.length)).toEqual([3, 4]);
    expect(responses.map((r) => r.metadata!.variant)).toEqual(["gbdt-only", "int8"]);
  });

  describe("fallback ladder: each rung reached by breaking what it guards, and the caller still gets items", () => {
    const rungOf = async (request: MessageInitShape<typeof PredictRequestSchema>, timeoutMs = GENEROUS_MS) => {
      const started = performance.now();
      const response = await predict({ numPredictions: 10, ...request }, timeoutMs);
      expect(response.predictions.length).toBeGreaterThan(0);
      return { ...response.metadata!, items: response.predictions, elapsedMs: performance.now() - started };
    };
    afterAll(() => {
      featureProxy.inject({});
      retrievalProxy.inject({});
      featureProxy.release();
    });

    it("cached: the feature store fails fast (UNAVAILABLE), the user's answer for another context is served", async () => {
      expect((await rungOf({ userId: "u000006", context: mobile })).fallbackLevel).toBe(FallbackLevel.PRIMARY);
      featureProxy.inject({ "*": { fail: Code.Unavailable } });
      const metadata = await rungOf({ userId: "u000006", context: desktop });
      expect(metadata).toMatchObject({ fallbackLevel: FallbackLevel.CACHED, stale: true });
      expect(metadata.fallbackReason).toMatch(/features: Unavailable/);
    });

    it("simplified: the feature store is down and nothing is cached, one ranker over default features", async () => {
      featureProxy.inject({ "*": { fail: Code.Unavailable } });
      const metadata = await rungOf({ userId: "u000007", context: mobile });
      expect(metadata).toMatchObject({ fallbackLevel: FallbackLevel.SIMPLIFIED, modelVersions: { "ranker-gbdt": "v1" } });
      expect(metadata.fallbackReason).toMatch(/ranked by ranker-gbdt alone over default features/);
    });

    it("simplified within the deadline: the feature store never answers", async () => {
      featureProxy.inject({ "*": { hold: true } });
      const deadlineMs = 3000;
      const metadata = await rungOf({ userId: "u000008", context: mobile }, deadlineMs);
      expect(metadata.fallbackLevel).toBe(FallbackLevel.SIMPLIFIED);
      expect(metadata.fallbackReason).toMatch(/features: DeadlineExceeded/);
      expect(metadata.elapsedMs).toBeLessThan(deadlineMs);
      featureProxy.inject({});
      featureProxy.release();
    });

    it("popular, by the user's favourite category: retrieval cannot give candidates, the local copy of the popular lists answers without asking it", async () => {
      featureProxy.inject({});
      retrievalProxy.inject({ GetCandidatesBatch: { fail: Code.Unavailable } });
      const popularCalls = retrievalProxy.calls.GetPopular ?? 0;
      const metadata = await rungOf({ userId: popular.userId, context: mobile, bypassCache: true });
      expect(metadata.fallbackLevel).toBe(FallbackLevel.POPULAR);
      expect(metadata.fallbackReason).toMatch(/candidates: Unavailable/);
      // The favourite category's list first, then the overall list.
      expect(metadata.items.slice(0, 6).map((p) => p.itemId)).toEqual([...popular.favouriteItems, ...popular.otherItems]);
      expect(metadata.items[0]!.explanation).toBe(`popular in ${popular.favourite}, one of your favourite categories`);
      expect(retrievalProxy.calls.GetPopular ?? 0).toBe(popularCalls);
    });

    it("popular, overall: retrieval is down entirely, a user without features gets the overall list", async () => {
      retrievalProxy.inject({ "*": { fail: Code.Unavailable } });
      const metadata = await rungOf({ userId: "visitor-without-features", context: mobile, bypassCache: true });
      expect(metadata.fallbackLevel).toBe(FallbackLevel.POPULAR);
      expect(metadata.items.slice(0, 6).map((p) => p.itemId)).toEqual([...popular.otherItems, ...popular.favouriteItems]);
      expect(metadata.items[0]!.explanation).toBe(`popular in ${popular.other}`);
    });

    it("popular from retrieval while the lists cannot be read; static only when retrieval is down too", async () => {
      // Nothing listens on this address: the instance has no Redis (no lists, no L2, no in-process assigner).
      const noRedis = await start({ REDIS_URL: `redis://127.0.0.1:${await freePort()}`, REDIS_CLUSTER_NODES: undefined });
      const noRedisClient = createServiceClient(PredictionService, `127.0.0.1:${noRedis.port}`);
      const ask = async () => {
        const response = await noRedisClient.predict({ userId: "u000011", context: mobile, bypassCache: true, modelVariant: "default", numPredictions: 10 }, { timeoutMs: GENEROUS_MS });
        expect(response.predictions).toHaveLength(10);
        return response.metadata!;
      };
      retrievalProxy.inject({ GetCandidatesBatch: { fail: Code.Unavailable } });
      expect(await ask()).toMatchObject({ fallbackLevel: FallbackLevel.POPULAR });
      retrievalProxy.inject({ "*": { fail: Code.Unavailable } });
      const metadata = await ask();
      expect(metadata).toMatchObject({ fallbackLevel: FallbackLevel.STATIC, modelVersions: { catalog: "v1" } });
      expect(metadata.fallbackReason).toMatch(/popular: Unavailable/);
      await noRedis.shutdown();
    });

    it("with 30% of retrieval calls failing, under 2% of answers are static", async () => {
      featureProxy.inject({});
      retrievalProxy.inject({ "*": { fail: Code.Unavailable, failRatio: 0.3 } });
      const callsBefore = retrievalProxy.calls.GetCandidatesBatch ?? 0;
      const failedBefore = retrievalProxy.failed.GetCandidatesBatch ?? 0;
      const total = 100;
      const rungs = new Map<FallbackLevel, number>();
      let next = 0;
      const worker = async () => {
        while (next < total) {
          const userId = `u${String(200 + next++).padStart(6, "0")}`;
          const { metadata } = await predict({ userId, context: mobile, bypassCache: true, modelVariant: "default", numPredictions: 10 });
          rungs.set(metadata!.fallbackLevel, (rungs.get(metadata!.fallbackLevel) ?? 0) + 1);
        }
      };
      await Promise.all(Array.from({ length: 4 }, worker));
      const calls = (retrievalProxy.calls.GetCandidatesBatch ?? 0) - callsBefore;
      const failed = (retrievalProxy.failed.GetCandidatesBatch ?? 0) - failedBefore;
      // The fault really hit about 30% of the candidate calls, and each of those answered from a rung below.
      expect(failed / calls).toBeGreaterThan(0.15);
      expect(failed / calls).toBeLessThan(0.45);
      expect(rungs.get(FallbackLevel.POPULAR) ?? 0).toBeGreaterThan(0);
      expect([...rungs.values()].reduce((a, b) => a + b, 0)).toBe(total);
      expect(rungs.get(FallbackLevel.STATIC) ?? 0).toBeLessThan(total * 0.02);
    }, 180_000);
  });

  it("sheds LOW with RESOURCE_EXHAUSTED and answers NORMAL from a cheaper rung when the queue backs up, while HIGH waits its turn", async () => {
    const narrow = await start({ MAX_CONCURRENT: "1", SHED_QUEUE_DELAY_MS: "20" });
    const narrowClient = createServiceClient(PredictionService, `127.0.0.1:${narrow.port}`);
    // The variant is pinned: assignment is not what this test is about.
    const ask = (userId: string, priority: Priority) =>
      narrowClient.predict({ userId, context: mobile, bypassCache: true, priority, modelVariant: "default" }, { timeoutMs: GENEROUS_MS });
    // The holder takes the only slot and keeps it until released: the queue backs up for as long as the test needs.
    retrievalProxy.inject({ GetCandidatesBatch: { hold: true } });
    const holder = ask("u000020", Priority.HIGH);
    await retrievalProxy.whenHeld(1);
    const high = ask("u000023", Priority.HIGH);
    const [low, normal] = await Promise.allSettled([ask("u000021", Priority.LOW), ask("u000022", Priority.NORMAL)]);
    retrievalProxy.inject({});
    retrievalProxy.release();
    expect((await holder).metadata!.fallbackLevel).toBe(FallbackLevel.PRIMARY);
    expect(low.status === "rejected" && ConnectError.from(low.reason).code).toBe(Code.ResourceExhausted);
    expect(normal.status === "fulfilled" && normal.value.metadata).toMatchObject({ fallbackLevel: FallbackLevel.POPULAR, fallbackReason: "overloaded: shed by admission" });
    expect((await high).metadata!.fallbackLevel).toBe(FallbackLevel.PRIMARY);
    await narrow.shutdown();
  });

  it("sends the candidate requests of one turn as one GetCandidatesBatch call, each answered as if alone", async () => {
    const reader = new CandidateReader(createServiceClient(RetrievalService, retrievalProxy.address), { k: 50, version: "batch-test" });
    const users = ["u000030", "u000031", "u000032", "u000033", "u000034", "u000035"];
    const context = create(RequestContextSchema, mobile);
    const alone = [];
    for (const userId of users) alone.push(await reader.forUser({ userId, context }, 0, GENEROUS_MS));
    const before = retrievalProxy.calls.GetCandidatesBatch ?? 0;
    const together = await Promise.all(users.map((userId) => reader.forUser({ userId, context }, 0, GENEROUS_MS)));
    expect((retrievalProxy.calls.GetCandidatesBatch ?? 0) - before).toBe(1);
    expect(together).toEqual(alone);
    expect(new Set(together.map((candidates) => candidates.map((c) => c.itemId).join())).size).toBeGreaterThan(1);
  });

  it("keeps its candidates when retrieval has no GetCandidatesBatch (an older retrieval in a rollout): one GetCandidates per request, the batch call probed by one request a minute later", async () => {
    let now = 1_000_000;
    const reader = new CandidateReader(createServiceClient(RetrievalService, retrievalProxy.address), { k: 50, version: "rollout-test", now: () => now });
    const users = ["u000040", "u000041", "u000042"];
    const context = create(RequestContextSchema, mobile);
    const together = () => Promise.all(users.map((userId) => reader.forUser({ userId, context }, 0, GENEROUS_MS)));
    const expected = await together();
    const counts = () => ({ batch: retrievalProxy.calls.GetCandidatesBatch ?? 0, single: retrievalProxy.calls.GetCandidates ?? 0 });
    const since = (before: { batch: number; single: number }) => {
      const after = counts();
      return { batch: after.batch - before.batch, single: after.single - before.single };
    };
    let before = counts();
    /** The calls one round of the three requests made; every answer must equal the batched one. */
    const round = async () => {
      before = counts();
      expect(await together()).toEqual(expected);
      return since(before);
    };
    retrievalProxy.inject({ GetCandidatesBatch: { fail: Code.Unimplemented } });
    try {
      expect(await round()).toEqual({ batch: 1, single: 3 });
      expect(await round()).toEqual({ batch: 0, single: 3 });
      // Each request on its own call fails alone: the others keep their candidates.
      retrievalProxy.inject({ GetCandidatesBatch: { fail: Code.Unimplemented }, GetCandidates: { fail: Code.Unavailable, failRatio: 0.5 } });
      const failedBefore = retrievalProxy.failed.GetCandidates ?? 0;
      const settled = await Promise.allSettled(users.map((userId) => reader.forUser({ userId, context }, 0, GENEROUS_MS)));
      const failedCalls = (retrievalProxy.failed.GetCandidates ?? 0) - failedBefore;
      expect(failedCalls).toBeGreaterThan(0);
      expect(failedCalls).toBeLessThan(users.length);
      expect(settled.filter((r) => r.status === "rejected").length).toBe(failedCalls);
      settled.forEach((r, i) => r.status === "fulfilled" && expect(r.value).toEqual(expected[i]));
      // A minute later one request probes with the batch call; the others keep to single calls meanwhile.
      retrievalProxy.inject({ GetCandidatesBatch: { fail: Code.Unimplemented } });
      now += BATCH_UNSUPPORTED_MS;
      expect(await round()).toEqual({ batch: 1, single: 3 });
      expect(await round()).toEqual({ batch: 0, single: 3 });
      // A probe that fails otherwise fails its own request only, and the next request probes again.
      retrievalProxy.inject({ GetCandidatesBatch: { fail: Code.Unavailable } });
      now += BATCH_UNSUPPORTED_MS;
      before = counts();
      const probed = await Promise.allSettled(users.map((userId) => reader.forUser({ userId, context }, 0, GENEROUS_MS)));
      expect(probed.map((r) => r.status)).toEqual(["rejected", "fulfilled", "fulfilled"]);
      expect(probed.slice(1).map((r) => (r as PromiseFulfilledResult<unknown>).value)).toEqual(expected.slice(1));
      expect(since(before)).toEqual({ batch: 1, single: 2 });
      retrievalProxy.inject({});
      expect(await round()).toEqual({ batch: 1, single: 2 });
      expect(await round()).toEqual({ batch: 1, single: 0 });
    } finally {
      retrievalProxy.inject({});
    }
  });

  it("runs one computation for N identical concurrent requests", async () => {
    const n = 16;
    retrievalProxy.inject({ GetCandidatesBatch: { hold: true } });
    const before = retrievalProxy.calls.GetCandidatesBatch ?? 0;
    const joinedBefore = await metricValue("recsys_prediction_coalesced_total", { version: "v1" });
    const request = { userId: "u000012", context: mobile, bypassCache: true, priority: Priority.HIGH, modelVariant: "default" };
    const answers = Promise.all(Array.from({ length: n }, () => predict(request)));
    // The first request's candidates call is held until every other request has joined its computation.
    await retrievalProxy.whenHeld(1);
    await expect.poll(async () => (await metricValue("recsys_prediction_coalesced_total", { version: "v1" })) - joinedBefore, EVENTUALLY).toBe(n - 1);
    retrievalProxy.inject({});
    retrievalProxy.release();
    const responses = await answers;
    expect((retrievalProxy.calls.GetCandidatesBatch ?? 0) - before).toBe(1);
    expect(new Set(responses.map((r) => JSON.stringify(r.predictions))).size).toBe(1);
    expect(responses.every((r) => r.metadata!.fallbackLevel === FallbackLevel.PRIMARY)).toBe(true);
  });

  it("swaps in a new model version under load without failing or degrading a request", async () => {
    const errors: unknown[] = [];
    const rungs = new Set<FallbackLevel>();
    const versions = new Set<string>();
    let answered = 0;
    let stop = false;
    const worker = async (w: number) => {
      for (let i = 0; !stop && i < 400; i++) {
        try {
          const response = await predict({ userId: `u0001${w}${i % 10}`, context: mobile, bypassCache: true, numPredictions: 5, modelVariant: "default" });
          rungs.add(response.metadata!.fallbackLevel);
          versions.add(response.metadata!.modelVersions["ranker-mlp"] ?? "");
        } catch (err) {
          errors.push(err);
        }
        answered++;
      }
    };
    const load = Promise.all([0, 1, 2, 3].map(worker));
    try {
      // Answers on the old models first, then the swap, then answers after it.
      await expect.poll(() => answered, EVENTUALLY).toBeGreaterThanOrEqual(8);
      for (const name of ["ranker-gbdt", "ranker-mlp", "ranker-mlp-int8"]) {
        cpSync(join(dir, "models", name, "v1"), join(dir, "models", name, "v2"), { recursive: true });
      }
      const reloaded = await client.reloadModels({}, admin);
      expect(reloaded.modelVersions).toMatchObject({ "ranker-gbdt": "v2", "ranker-mlp": "v2", embeddings: "v1" });
      // Four workers have at most four requests on the old models in flight: eight more answers include new ones.
      const atSwap = answered;
      await expect.poll(() => answered - atSwap, EVENTUALLY).toBeGreaterThanOrEqual(8);
    } finally {
      stop = true;
      await load;
    }
    expect(errors).toEqual([]);
    expect(rungs).toEqual(new Set([FallbackLevel.PRIMARY]));
    expect(versions).toEqual(new Set(["v1", "v2"]));
    expect((await predict({ userId: "u000013", context: mobile, modelVariant: "default" })).metadata!.modelVersions["ranker-mlp"]).toBe("v2");
  });

  it("serves a stale prediction at once and refreshes it in the background", async () => {
    const quick = await start({ CACHE_FRESH_S: "1" });
    const quickClient = createServiceClient(PredictionService, `127.0.0.1:${quick.port}`);
    const request = { userId: "u000014", context: mobile, modelVariant: "default" };
    const first = await quickClient.predict(request);
    expect(first.metadata).toMatchObject({ cacheLevel: CacheLevel.MISS, stale: false, fallbackLevel: FallbackLevel.PRIMARY });
    // Staleness is age: past the 1 s freshness the entry is stale, however slow the machine.
    await new Promise((r) => setTimeout(r, 1100));
    const refreshesBefore = await metricValue("recsys_prediction_computations_total", { version: "v1", reason: "refresh" });
    const stale = await quickClient.predict(request);
    expect(stale.metadata).toMatchObject({ cacheLevel: CacheLevel.L1, stale: true, fallbackLevel: FallbackLevel.PRIMARY });
    expect(stale.predictions).toEqual(first.predictions);
    await expect.poll(() => metricValue("recsys_prediction_computations_total", { version: "v1", reason: "refresh" }), EVENTUALLY).toBeGreaterThan(refreshesBefore);
    await expect.poll(async () => (await quickClient.predict(request)).metadata!.stale, EVENTUALLY).toBe(false);
    await quick.shutdown();
  });

  it("precomputes L2 predictions for the most active users", async () => {
    const config = loadPredictionConfig({
      LOG_LEVEL: "silent",
      ...redis.env,
      MODELS_DIR: join(dir, "models"),
      FEATURE_ADDR: featureProxy.address,
      RETRIEVAL_ADDR: retrievalProxy.address,
      DEFAULT_DEADLINE_MS: String(GENEROUS_MS),
    });
    const progress: number[] = [];
    // One instant for the job and the request below, so both fall in one time-of-day bucket.
    const atMs = Date.now();
    const summary = await precompute({ config, users: 3, devices: [Device.MOBILE, Device.DESKTOP], concurrency: 2, atMs, onProgress: (done) => progress.push(done) });
    expect(summary).toMatchObject({ written: 6, degraded: 0 });
    expect(progress).toEqual([1, 2, 3, 4, 5, 6]);
    const top = summary.users[0]!;
    // The most active user: the highest user_log_events in the materialised features.
    const activity = readFileSync(join(dir, "models", "features", "v1", "user_features.jsonl"), "utf8")
      .trim()
      .split("\n")
      .map((line) => JSON.parse(line) as { entity_id: string; values: { user_log_events: number } });
    expect(top).toBe(activity.sort((a, b) => b.values.user_log_events - a.values.user_log_events)[0]!.entity_id);
    const served = await predict({ userId: top, context: { device: Device.DESKTOP, timestamp: timestampFromMs(atMs) } });
    expect(served.metadata!.cacheLevel).toBe(CacheLevel.L2);
  });
});
