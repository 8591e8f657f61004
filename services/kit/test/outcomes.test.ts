import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EventType } from "../../../gen/recsys/common/v1/common_pb.js";
import { startRedis, type TestRedis } from "../../../test/support/redis.js";
import { createLogger } from "../log.js";
import { OutcomeFeed, outcomesOf, publishOutcomes, type Outcome } from "../outcomes.js";
import { createRedis, waitUntilReady, type RedisClient } from "../redis.js";

let redis: TestRedis;
let client: RedisClient;
const log = createLogger("outcomes-test", "silent");

beforeAll(async () => {
  redis = await startRedis();
  client = createRedis({ REDIS_URL: redis.url }, { commandTimeoutMs: 2_000 });
  await waitUntilReady(client, 10_000);
}, 60_000);
afterAll(async () => {
  client?.disconnect();
  await redis?.stop();
});

/** Resolves with the first n outcomes the feed delivers, or rejects with what came after timeoutMs. */
function collect(seen: Outcome[], n: number, timeoutMs: number): Promise<Outcome[]> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const poll = () => {
      if (seen.length >= n) resolve(seen.slice(0, n));
      else if (Date.now() > deadline) reject(new Error(`${seen.length} of ${n} outcomes within ${timeoutMs} ms: ${JSON.stringify(seen)}`));
      else setTimeout(poll, 20);
    };
    poll();
  });
}

describe("the outcome stream", () => {
  it("keeps clicks and purchases of accepted events, not views or impressions", () => {
    const at = 1_700_000_000_000;
    const events = [
      { userId: "u1", itemId: "i1", type: EventType.VIEW, atMs: at },
      { userId: "u1", itemId: "i1", type: EventType.CLICK, atMs: at + 1 },
      { userId: "u2", itemId: "i9", type: EventType.IMPRESSION, atMs: at + 2 },
      { userId: "u2", itemId: "i9", type: EventType.PURCHASE, atMs: at + 3 },
    ];
    expect(outcomesOf(events, (e) => e.atMs)).toEqual([
      { userId: "u1", itemId: "i1", atMs: at + 1 },
      { userId: "u2", itemId: "i9", atMs: at + 3 },
    ]);
  });

  it("delivers what is published after the feed is ready, in order, and not what came before", async () => {
    await publishOutcomes(client, [{ userId: "before", itemId: "i0", atMs: 1 }]);
    const seen: Outcome[] = [];
    const feed = new OutcomeFeed({ REDIS_URL: redis.url }, (o) => seen.push(o), { blockMs: 200, commandTimeoutMs: 2_000, log });
    try {
      await feed.ready;
      const published = Array.from({ length: 50 }, (_, k) => ({ userId: `u${k % 7}`, itemId: `i${k}`, atMs: 1_700_000_000_000 + k }));
      await publishOutcomes(client, published.slice(0, 20));
      await publishOutcomes(client, published.slice(20));
      expect(await collect(seen, 50, 20_000)).toEqual(published);
      await new Promise((r) => setTimeout(r, 300));
      expect(seen).toHaveLength(50);
    } finally {
      await feed.close();
    }
  });

  it("resumes after Redis restarts, from where it was", async () => {
    const seen: Outcome[] = [];
    const feed = new OutcomeFeed({ REDIS_URL: redis.url }, (o) => seen.push(o), { blockMs: 200, commandTimeoutMs: 1_000, log });
    try {
      await feed.ready;
      await publishOutcomes(client, [{ userId: "a", itemId: "i1", atMs: 1 }]);
      await collect(seen, 1, 20_000);
      await redis.stop();
      redis = await startRedis(redis.port);
      // The client reconnects in the background and fails fast meanwhile: resend until it is back.
      for (let attempt = 0; ; attempt++) {
        try {
          await publishOutcomes(client, [{ userId: "b", itemId: "i2", atMs: 2 }]);
          break;
        } catch (err) {
          if (attempt > 100) throw err;
          await new Promise((r) => setTimeout(r, 200));
        }
      }
      expect((await collect(seen, 2, 30_000))[1]).toEqual({ userId: "b", itemId: "i2", atMs: 2 });
    } finally {
      await feed.close();
    }
  }, 60_000);
});
