// The prediction service's user feature reads against a real feature service and
// Redis, through a fault proxy that counts the calls: the reads of one event-loop turn
// share one call, each request still gets its own user and keeps its own budget, and
// the request features computed here match the feature service's.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { timestampFromMs, timestampNow } from "@bufbuild/protobuf/wkt";
import { create } from "@bufbuild/protobuf";
import { Device, RequestContextSchema } from "../../../gen/recsys/common/v1/common_pb.js";
import { EntityType, FeatureService } from "../../../gen/recsys/feature/v1/feature_pb.js";
import { startRedis, type TestRedis } from "../../../test/support/redis.js";
import { startFeatureService } from "../../feature/server.js";
import { Code, ConnectError, createServiceClient, registry, type RunningServer } from "../../kit/index.js";
import { localRequestFeatures } from "../context.js";
import { FeatureReader } from "../features.js";
import { waitServing } from "../../../scripts/lib/mesh.js";
import { startFaultProxy, type FaultProxy } from "./fault-proxy.js";

const VERSION = "user-features-test";
const USERS = ["uf-1", "uf-2", "uf-3", "uf-4", "uf-5"];
const ctrOf = (userId: string) => 0.01 * Number(userId.slice(3));
const context = create(RequestContextSchema, { device: Device.MOBILE });

/** Calls for user features so far, and the requests they carried (the reader's histogram). */
async function userReads(): Promise<{ calls: number; users: number }> {
  const values = ((await registry.getSingleMetric("recsys_prediction_batched_call_requests")?.get())?.values ?? []) as { labels: Record<string, unknown>; value: number; metricName?: string }[];
  const total = (suffix: string) => values.find((v) => v.labels.version === VERSION && v.labels.call === "user_features" && v.metricName?.endsWith(suffix))?.value ?? 0;
  return { calls: total("_count"), users: total("_sum") };
}

describe("user feature reads", () => {
  let redis: TestRedis;
  let feature: RunningServer;
  let proxy: FaultProxy;
  let reader: FeatureReader;

  beforeAll(async () => {
    redis = await startRedis();
    feature = await startFeatureService({ GRPC_PORT: "0", LOG_LEVEL: "silent", REDIS_URL: redis.url, REDIS_COMMAND_TIMEOUT_MS: "5000" });
    await waitServing(`127.0.0.1:${feature.port}`, "", 30_000);
    await createServiceClient(FeatureService, `127.0.0.1:${feature.port}`).writeFeatures(
      {
        rows: USERS.map((userId) => ({
          entityType: EntityType.USER,
          entityId: userId,
          featureView: "user_profile",
          values: { user_ctr: { kind: { case: "doubleValue", value: ctrOf(userId) } } },
          eventTime: timestampNow(),
        })),
      },
      { timeoutMs: 20_000 },
    );
    proxy = await startFaultProxy(FeatureService, `127.0.0.1:${feature.port}`);
    reader = new FeatureReader(createServiceClient(FeatureService, proxy.address), {
      userCacheEntries: 10,
      userCacheTtlMs: 60_000,
      itemCacheEntries: 10,
      itemRefreshMs: 30_000,
      itemMaxAgeMs: 600_000,
      itemUnknownMs: 1_000,
      version: VERSION,
    });
  }, 60_000);
  afterAll(async () => {
    await proxy?.stop();
    await feature?.shutdown();
    await redis?.stop();
  });

  it("the reads of one turn share one call, and each request gets its own user's features", async () => {
    const callsBefore = proxy.calls.GetOnlineFeatures ?? 0;
    const readsBefore = await userReads();
    const answers = await Promise.all(USERS.map((userId) => reader.user({ userId, context }, 5_000)));
    expect(proxy.calls.GetOnlineFeatures).toBe(callsBefore + 1);
    expect(await userReads()).toEqual({ calls: readsBefore.calls + 1, users: readsBefore.users + USERS.length });
    answers.forEach((answer, i) => {
      expect(answer.source).toBe("live");
      expect(answer.user["user_profile:user_ctr"]).toBeCloseTo(ctrOf(USERS[i]!), 12);
      expect(answer.request.device_mobile).toBe(1);
    });
    // Alone, a read goes out by itself, at the end of its turn.
    expect((await reader.user({ userId: USERS[0]!, context }, 5_000)).user["user_profile:user_ctr"]).toBeCloseTo(ctrOf(USERS[0]!), 12);
    expect(proxy.calls.GetOnlineFeatures).toBe(callsBefore + 2);
  });

  it("a request with a shorter budget gives up at its own deadline; the others in its call are answered", async () => {
    // Far longer than the short budget, so a slow machine's late timer still fires before the answer.
    proxy.inject({ GetOnlineFeatures: { delayMs: 1_500 } });
    try {
      const started = performance.now();
      const [short, long] = await Promise.allSettled([reader.user({ userId: USERS[1]!, context }, 50), reader.user({ userId: USERS[2]!, context }, 5_000)]);
      expect(short.status).toBe("rejected");
      expect(ConnectError.from((short as PromiseRejectedResult).reason).code).toBe(Code.DeadlineExceeded);
      expect(long.status === "fulfilled" && long.value.user["user_profile:user_ctr"]).toBeCloseTo(ctrOf(USERS[2]!), 12);
      expect(performance.now() - started).toBeGreaterThanOrEqual(1_500);
    } finally {
      proxy.inject({});
    }
  });

  it("a failed call fails every request in it, each with the call's error", async () => {
    proxy.inject({ GetOnlineFeatures: { fail: Code.Unavailable } });
    try {
      const results = await Promise.allSettled(USERS.slice(0, 3).map((userId) => reader.user({ userId, context }, 5_000)));
      for (const result of results) {
        expect(result.status).toBe("rejected");
        expect(ConnectError.from((result as PromiseRejectedResult).reason).code).toBe(Code.Unavailable);
      }
    } finally {
      proxy.inject({});
    }
  });

  it("computes the request features the rankers use as the feature service defines them", async () => {
    const features = createServiceClient(FeatureService, `127.0.0.1:${feature.port}`);
    for (const timeZone of ["", "America/New_York", "Asia/Kolkata"]) {
      for (const device of [Device.MOBILE, Device.DESKTOP, Device.TABLET, Device.UNSPECIFIED]) {
        const at = create(RequestContextSchema, { device, timeZone, timestamp: timestampFromMs(Date.UTC(2026, 10, 28, 19, 47)) });
        const served = (await features.getOnlineFeatures({ featureRefs: ["request"], context: at }, { timeoutMs: 5_000 })).requestFeatures;
        const number = (name: string) => {
          const kind = served[name]?.value?.kind;
          return kind?.case === "boolValue" ? Number(kind.value) : (kind?.value as number);
        };
        const local = localRequestFeatures(at);
        for (const name of Object.keys(local)) expect(local[name], `${name} in "${timeZone}"`).toBeCloseTo(number(name), 12);
      }
    }
  });
});
