// The popular and trending lists the retrieval service reads (README, "Popular and
// trending lists"): sorted sets recsys:popular:<category|all> and
// recsys:trending:<category|all>, member item id, higher score first.
//
// The aggregator counts interactions as events arrive, per partition and category: into
// a live set and an hour bucket (popular), and into a forward-decayed set per UTC day
// (trending); "all" is merged from the categories when publishing.
// The publisher, every interval, subtracts the hour buckets that left the 24-hour
// window from the live sets, and publishes the top K. Each step costs O(K log N) (plus,
// once an hour, the expiring bucket's size), not a union over every item each time.
// An item's counts live in one partition only, so the top K of the whole list is among
// the partitions' own top K: merging those is exact for popular. Trending merges the
// top 2K of today and of yesterday per partition: exact unless an item ranks below 2K
// on both days yet within the top K combined.
import {
  ALL_CATEGORIES,
  NO_CATEGORY,
  categoriesKey,
  popularBucketKey,
  popularKey,
  popularLiveKey,
  popularSeedKey,
  popularStagingKey,
  trendingDayKey,
  trendingKey,
} from "./keys.js";
import { popularLists } from "./registry.js";
import type { RedisClient } from "../kit/redis.js";
import { execAll } from "./redis.js";

const HOUR_MS = 3_600_000;
const DAY_MS = 86_400_000;
/** Hour buckets live a day and a few hours past the window (aggregation.ts); older ones are gone. */
const EXPIRED_HOURS_CHECKED = 27;

type Ranked = [itemId: string, score: number][];

function pairs(reply: string[]): Ranked {
  const out: Ranked = [];
  for (let i = 0; i + 1 < reply.length; i += 2) out.push([reply[i]!, Number(reply[i + 1])]);
  return out;
}

/** The k best of several lists, an item's scores summed where it appears in more than one. */
function topK(lists: Ranked[], k: number): Ranked {
  const sums = new Map<string, number>();
  for (const [item, score] of lists.flat()) sums.set(item, (sums.get(item) ?? 0) + score);
  return [...sums]
    .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))
    .slice(0, k);
}

const flat = (ranked: Ranked) => ranked.flatMap(([item, score]) => [String(score), item]);

/** popular: interactions in the current hour bucket and the 23 before it. */
async function livePopular(redis: RedisClient, partitions: number, category: string, now: number, k: number): Promise<Ranked> {
  const firstExpired = Math.floor(now / HOUR_MS) - popularLists.buckets;
  const perPartition = await Promise.all(
    Array.from({ length: partitions }, async (_, p) => {
      const expired = Array.from({ length: EXPIRED_HOURS_CHECKED }, (_, i) => popularBucketKey(p, category, firstExpired - i));
      return pairs(await redis.recsysExpirePopular(1 + expired.length, popularLiveKey(p, category), ...expired, String(k)));
    }),
  );
  return topK(perPartition, k);
}

/** trending: today's and yesterday's forward-decayed scores, decayed to now. */
async function liveTrending(redis: RedisClient, partitions: number, category: string, now: number, k: number): Promise<Ranked> {
  const today = Math.floor(now / DAY_MS);
  const halfLifeMs = popularLists.trendingHalfLifeSeconds * 1000;
  const perDay = await Promise.all(
    Array.from({ length: partitions }, (_, p) => [today, today - 1].map(async (day) => {
      const weight = 2 ** ((day * DAY_MS - now) / halfLifeMs);
      const ranked = pairs(await redis.zrange(trendingDayKey(p, category, day), 0, 2 * k - 1, "REV", "WITHSCORES"));
      return ranked.map(([item, score]): [string, number] => [item, score * weight]);
    })).flat(),
  );
  return topK(perDay, k);
}

/** Replaces a published list in one MULTI; popular lists add the catalogue seed. */
async function publish(redis: RedisClient, kind: "popular" | "trending", category: string, ranked: Ranked, topKSize: number): Promise<void> {
  if (kind === "trending") {
    const write = redis.multi().del(trendingKey(category));
    if (ranked.length > 0) write.zadd(trendingKey(category), ...flat(ranked));
    await execAll(write);
    return;
  }
  const list = popularKey(category);
  const staging = popularStagingKey(category);
  const write = redis.multi().del(staging);
  if (ranked.length > 0) write.zadd(staging, ...flat(ranked));
  await execAll(write.zunionstore(list, 2, staging, popularSeedKey(category)).zremrangebyrank(list, 0, -(topKSize + 1)).del(staging));
}

/**
 * Republishes every list from the live counts. popular adds the catalogue seed (in
 * [0, 1): a prior that orders items with equal counts and fills a quiet category).
 * Events are counted in their category only; "all" merges the categories' top K,
 * which holds the overall top K as long as an item keeps one category.
 */
export async function publishLists(redis: RedisClient, partitions: number, topKSize: number, now: number): Promise<void> {
  const members = await Promise.all(Array.from({ length: partitions }, (_, p) => redis.smembers(categoriesKey(p))));
  const categories = [...new Set(members.flat())];
  const lists = await Promise.all(
    categories.map(async (category) => {
      const [popular, trending] = await Promise.all([
        livePopular(redis, partitions, category, now, topKSize),
        liveTrending(redis, partitions, category, now, topKSize),
      ]);
      if (category !== NO_CATEGORY) {
        await Promise.all([publish(redis, "popular", category, popular, topKSize), publish(redis, "trending", category, trending, topKSize)]);
      }
      return { popular, trending };
    }),
  );
  await Promise.all([
    publish(redis, "popular", ALL_CATEGORIES, topK(lists.map((l) => l.popular), topKSize), topKSize),
    publish(redis, "trending", ALL_CATEGORIES, topK(lists.map((l) => l.trending), topKSize), topKSize),
  ]);
}

/**
 * Seeds the popular lists from catalogue popularity: per category and overall, the
 * top K items scored popularity / max * 0.999, so any live count ranks above any seed.
 * Each list is replaced by its seed; the next publish adds the live counts back.
 */
export async function seedPopular(
  redis: RedisClient,
  items: Iterable<{ itemId: string; category: string; popularity: number }>,
  topKSize: number,
): Promise<Map<string, number>> {
  const byCategory = new Map<string, Ranked>([[ALL_CATEGORIES, []]]);
  for (const item of items) {
    for (const category of [item.category, ALL_CATEGORIES]) {
      let list = byCategory.get(category);
      if (!list) byCategory.set(category, (list = []));
      list.push([item.itemId, item.popularity]);
    }
  }
  const sizes = new Map<string, number>();
  for (const [category, ranked] of byCategory) {
    const top = topK([ranked], topKSize);
    const max = top[0]?.[1] ?? 0;
    const seed = popularSeedKey(category);
    const write = redis.multi().del(seed);
    if (max > 0) write.zadd(seed, ...flat(top.map(([item, popularity]) => [item, (popularity / max) * 0.999])));
    await execAll(write.zunionstore(popularKey(category), 1, seed));
    sizes.set(category, max > 0 ? top.length : 0);
  }
  return sizes;
}
