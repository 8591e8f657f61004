import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestRedis, type TestRedisTarget } from "../../../test/support/redis-cluster.js";
import { createLogger } from "../../kit/index.js";
import type { RedisClient } from "../../kit/redis.js";
import { PredictionCache, type CacheKey, type CachedPrediction } from "../cache.js";

const entry = (computedAt: number, itemId = "i1"): CachedPrediction => ({
  items: [{ itemId, score: 0.5, category: "c01", explanation: "test" }],
  computedAt,
  modelVersions: { "ranker-gbdt": "v1" },
  experimentId: "",
  variant: "default",
  complete: false,
  featureAgeSeconds: 0,
});
const key = (userId: string, bucket = "mobile.h9"): CacheKey => ({ userId, bucket, variant: "builtin/default#x", models: "m@v1" });

describe("prediction cache (L1 LRU + L2 real Redis)", () => {
  let redis: TestRedisTarget;
  let caches: PredictionCache[];
  let probe: RedisClient;
  const open = () =>
    new PredictionCache({
      redis: redis.env,
      // A budget a crowded machine meets: these tests are about what is cached, not Redis's speed.
      redisTimeoutMs: 2_000,
      l1MaxEntries: 100,
      l1TtlMs: 60_000,
      freshSeconds: 60,
      staleSeconds: 600,
      version: "v1",
      log: createLogger("test", "silent"),
    });

  beforeAll(async () => {
    redis = await startTestRedis();
    caches = [open(), open()];
    probe = redis.client();
    probe.on("error", () => {});
    for (const cache of caches) expect(await cache.connect(5000)).toBe(true);
  });
  afterAll(async () => {
    await Promise.all(caches.map((c) => c.close()));
    probe.disconnect();
    await redis.stop();
  });

  it("serves a write from L1 here and from L2 in another instance, then from that instance's L1", async () => {
    const [a, b] = caches as [PredictionCache, PredictionCache];
    await a.set(key("u1"), entry(Date.now()));
    expect(await a.get(key("u1"))).toMatchObject({ level: "l1", stale: false });
    expect(await b.get(key("u1"))).toMatchObject({ level: "l2", stale: false });
    expect(await b.get(key("u1"))).toMatchObject({ level: "l1" });
    expect(await a.get(key("u1", "desktop.h9"))).toBeUndefined();
  });

  it("flags entries past freshness as stale and drops them past the stale window", async () => {
    const [a] = caches as [PredictionCache];
    await a.set(key("u2"), entry(Date.now() - 120_000));
    expect(await a.get(key("u2"))).toMatchObject({ stale: true });
    await a.set(key("u3"), entry(Date.now() - 700_000));
    expect(await a.get(key("u3"))).toBeUndefined();
  });

  it("finds any servable entry of a user for the fallback ladder, the same context first", async () => {
    const [a] = caches as [PredictionCache];
    await a.set(key("u4", "desktop.h9"), entry(Date.now() - 1000, "desktop-item"));
    await a.set(key("u4", "tablet.h9"), entry(Date.now(), "tablet-item"));
    expect((await a.anyForUser(key("u4", "desktop.h9")))?.entry.items[0]?.itemId).toBe("desktop-item");
    const other = await a.anyForUser(key("u4", "mobile.h12"));
    expect(other).toMatchObject({ bucket: "tablet.h9" });
    expect(await a.anyForUser(key("nobody"))).toBeUndefined();
  });

  it("invalidates users in L2 and in every instance's L1", async () => {
    const [a, b] = caches as [PredictionCache, PredictionCache];
    await a.set(key("u5"), entry(Date.now()));
    await b.get(key("u5"));
    expect(await a.invalidate(["u5", "never-cached"])).toEqual({ l1Removed: 1, l2Removed: 1 });
    // Pub/sub reaches the other instance when the machine gets round to it: wait for it, generously.
    await expect.poll(() => b.get(key("u5")), { timeout: 20_000 }).toBeUndefined();
    expect(await probe.exists("recsys:pred:u:u5")).toBe(0);
  });

  it("invalidates everything (on a cluster: on every master)", async () => {
    const [a] = caches as [PredictionCache];
    const users = Array.from({ length: 20 }, (_, i) => `u6-${i}`);
    for (const user of users) await a.set(key(user), entry(Date.now()));
    const { l2Removed } = await a.invalidate("all");
    expect(l2Removed).toBeGreaterThanOrEqual(users.length);
    expect(await redis.keys("recsys:pred:*")).toEqual([]);
    expect(await a.get(key("u6-0"))).toBeUndefined();
  });

  it("counts a Redis outage as a miss, keeps L1, and fails invalidation loudly", async () => {
    const [a] = caches as [PredictionCache];
    await a.set(key("u7"), entry(Date.now()));
    await redis.kill();
    expect(await a.get(key("u7"))).toMatchObject({ level: "l1" });
    expect(await a.get(key("u8"))).toBeUndefined();
    expect(await a.anyForUser(key("u7", "desktop.h0"))).toMatchObject({ level: "l1", bucket: "mobile.h9" });
    await expect(a.invalidate(["u7"])).rejects.toThrow();
  });
});
