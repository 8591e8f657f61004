import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Redis } from "ioredis";
import { startRedis, type TestRedis } from "../../../test/support/redis.js";
import { createLogger, registry } from "../../kit/index.js";
import { ALL_CATEGORIES, PopularCopy, pickPopular } from "../popular.js";

const VERSION = "popular-test";

/** A series' value as /metrics shows it, for this file's version label. */
async function metric(name: string, labels: Record<string, string> = {}): Promise<number | undefined> {
  const values = (await registry.getSingleMetric(name)?.get())?.values ?? [];
  const wanted = { version: VERSION, ...labels };
  return values.find((v) => Object.entries(wanted).every(([k, value]) => v.labels[k] === value))?.value;
}

describe("the local copy of the popular lists (real Redis)", () => {
  let redis: TestRedis;
  let writer: Redis;
  let copy: PopularCopy;
  let clock = Date.parse("2026-03-02T10:00:00Z");
  const catalogue = new Map([
    ["a1", "c1"],
    ["a2", "c1"],
    ["a3", "c1"],
    ["a4", "c1"],
    ["b1", "c2"],
    ["b2", "c2"],
  ]);

  beforeAll(async () => {
    redis = await startRedis();
    writer = new Redis(redis.url);
    writer.on("error", () => {});
    // The lists as the feature service publishes them (services/feature/README.md).
    await writer.zadd("recsys:popular:c1", 4, "a1", 3, "a2", 2, "a3", 1, "a4");
    await writer.zadd("recsys:popular:c2", 9, "b1", 8, "b2");
    await writer.zadd("recsys:popular:all", 9, "b1", 8, "b2", 7, "deleted-item", 4, "a1");
    copy = new PopularCopy({
      redis: { REDIS_URL: redis.url },
      readTimeoutMs: 300,
      depth: 3,
      categories: () => ["c1", "c2", "c3"],
      version: VERSION,
      log: createLogger("test", "silent"),
      now: () => clock,
    });
  });
  afterAll(async () => {
    await copy?.close();
    writer?.disconnect();
    await redis?.stop();
  });

  it("holds the top of every list, and reports its age as a metric", async () => {
    expect(await copy.connect(10_000)).toBe(true);
    expect(await copy.refresh()).toBe(true);
    expect(copy.list("c1")).toEqual([
      { itemId: "a1", score: 4 },
      { itemId: "a2", score: 3 },
      { itemId: "a3", score: 2 },
    ]);
    expect(copy.list(ALL_CATEGORIES)?.map((i) => i.itemId)).toEqual(["b1", "b2", "deleted-item"]);
    expect(copy.list("c3")).toBeUndefined();
    expect(await metric("recsys_prediction_popular_list_age_seconds")).toBe(0);
    expect(await metric("recsys_prediction_popular_refresh_total", { result: "ok" })).toBe(1);
  });

  it("picks the preferred categories' items in turn, then the overall list, each once and only known items", () => {
    const categoryOf = (id: string) => catalogue.get(id);
    expect(pickPopular(copy, ["c1", "c2"], 5, categoryOf).map((p) => [p.itemId, p.preferred])).toEqual([
      ["a1", true],
      ["b1", true],
      ["a2", true],
      ["b2", true],
      ["a3", true],
    ]);
    expect(pickPopular(copy, ["c3"], 5, categoryOf).map((p) => [p.itemId, p.category, p.preferred])).toEqual([
      ["b1", "c2", false],
      ["b2", "c2", false],
    ]);
  });

  it("keeps the last good copy while Redis hangs, is down, or comes back empty; the age metric grows", async () => {
    // Hung: the read gives up after its timeout.
    redis.process.child.kill("SIGSTOP");
    try {
      clock += 10_000;
      expect(await copy.refresh()).toBe(false);
    } finally {
      redis.process.child.kill("SIGCONT");
    }
    expect(copy.list("c1")?.[0]?.itemId).toBe("a1");
    expect(await metric("recsys_prediction_popular_list_age_seconds")).toBe(10);

    // Down: fails at once.
    const port = redis.port;
    await redis.stop(true);
    clock += 20_000;
    expect(await copy.refresh()).toBe(false);
    expect(copy.list("c1")?.[0]?.itemId).toBe("a1");
    expect(copy.ageSeconds()).toBe(30);
    expect(await metric("recsys_prediction_popular_list_age_seconds")).toBe(30);
    expect(await metric("recsys_prediction_popular_refresh_total", { result: "error" })).toBe(2);

    // Back, but empty: nothing published yet is no reason to forget the lists.
    redis = await startRedis(port);
    expect(await copy.connect(10_000)).toBe(true);
    expect(await copy.refresh()).toBe(false);
    expect(copy.list("c1")?.[0]?.itemId).toBe("a1");
    expect(await metric("recsys_prediction_popular_refresh_total", { result: "empty" })).toBe(1);

    // Published again: the copy follows.
    await expect.poll(() => writer.status, { timeout: 10_000 }).toBe("ready");
    await writer.zadd("recsys:popular:c1", 5, "a4");
    expect(await copy.refresh()).toBe(true);
    expect(copy.list("c1")).toEqual([{ itemId: "a4", score: 5 }]);
    expect(copy.list("c2")).toBeUndefined();
    expect(await metric("recsys_prediction_popular_list_age_seconds")).toBe(0);
  });
});
