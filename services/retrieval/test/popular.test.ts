// Popular and trending lists held between reads, against a real Redis: how many reads
// reach it (its own INFO commandstats), and what a request is answered while a held
// list is renewed or Redis is gone.
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { startTestRedis, type TestRedisTarget } from "../../../test/support/redis-cluster.js";
import { createLogger } from "../../kit/index.js";
import type { RedisClient } from "../../kit/redis.js";
import { PopularLists, staticPopularity, type RankedList } from "../popular.js";

const log = createLogger("popular-test", "silent");
const catalogue = staticPopularity([
  { itemId: "static-1", category: "cat-1", popularity: 9 },
  { itemId: "static-2", category: "cat-1", popularity: 8 },
]);
const all = { kind: "popular" as const, category: "all" };
const top = (lists: RankedList[]) => lists.map((list) => list.items[0]?.itemId);

describe("popular lists held between reads", () => {
  let redis: TestRedisTarget;
  let writer: RedisClient;
  const opened: PopularLists[] = [];
  /** Lists with this hold, once their Redis client is connected (a read with another count than the tests' says so). */
  const lists = async (cacheMs: number) => {
    const popular = new PopularLists(redis.env, 1_000, catalogue, log, cacheMs);
    opened.push(popular);
    await vi.waitFor(async () => expect((await popular.read([all], 1))[0]!.fallback).toBeUndefined(), { timeout: 10_000 });
    return popular;
  };
  /** ZREVRANGE commands Redis has served so far (one node's INFO: this file runs on a single Redis, not in the cluster project). */
  const listReads = async () => Number((await writer.info("commandstats")).match(/cmdstat_zrevrange:calls=(\d+)/)?.[1] ?? 0);

  beforeAll(async () => {
    redis = await startTestRedis();
    writer = redis.client();
    await writer.zadd("recsys:popular:all", 3, "item-a", 2, "item-b", 1, "item-c");
  });
  afterAll(async () => {
    await Promise.all(opened.map((popular) => popular.close()));
    writer?.disconnect();
    await redis?.stop();
  });

  it("answers every request within the hold from one read, concurrent or not", async () => {
    const popular = await lists(60_000);
    const before = await listReads();
    const concurrent = await Promise.all(Array.from({ length: 20 }, () => popular.read([all], 10)));
    const later = await popular.read([all], 10);
    expect(new Set([...concurrent, later].map((reply) => JSON.stringify(reply))).size).toBe(1);
    expect(later[0]!.items.map((item) => item.itemId)).toEqual(["item-a", "item-b", "item-c"]);
    expect((await listReads()) - before).toBe(1);
    // Another count is another read.
    expect((await popular.read([all], 2))[0]!.items).toHaveLength(2);
    expect((await listReads()) - before).toBe(2);
  });

  it("reads Redis on every request when the hold is 0", async () => {
    const popular = await lists(0);
    const before = await listReads();
    for (let i = 0; i < 5; i++) await popular.read([all], 10);
    expect((await listReads()) - before).toBe(5);
  });

  it("answers a republished list once the hold is over", async () => {
    const popular = await lists(200);
    expect(top(await popular.read([all], 10))).toEqual(["item-a"]);
    await writer.zadd("recsys:popular:all", 10, "item-new");
    try {
      await vi.waitFor(async () => expect(top(await popular.read([all], 10))).toEqual(["item-new"]), { timeout: 10_000 });
    } finally {
      await writer.zrem("recsys:popular:all", "item-new");
    }
  });

  it("answers a held list while Redis is gone, and the catalogue once the hold is over", async () => {
    const [held, brief] = await Promise.all([lists(60_000), lists(200)]);
    expect(top(await held.read([all], 10))).toEqual(["item-a"]);
    expect(top(await brief.read([all], 10))).toEqual(["item-a"]);
    writer.disconnect();
    await redis.kill();
    try {
      const [list] = await held.read([all], 10);
      expect(list!.fallback).toBeUndefined();
      expect(list!.items.map((item) => item.itemId)).toEqual(["item-a", "item-b", "item-c"]);
      const fallback = await vi.waitFor(
        async () => {
          const [list] = await brief.read([all], 10);
          expect(list!.fallback).toBe("redis_unavailable");
          return list!;
        },
        { timeout: 10_000 },
      );
      expect(fallback.items.map((item) => item.itemId)).toEqual(["static-1", "static-2"]);
    } finally {
      await redis.restart();
      writer = redis.client();
    }
  });
});
