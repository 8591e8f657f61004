import { LRUCache } from "lru-cache";
import { ALL_CATEGORIES, rankedListKey, type RankedListKind } from "../kit/ranked-lists.js";
import type { Logger } from "../kit/index.js";
import { closeRedis, createRedis, type RedisClient, type RedisSettings } from "../kit/redis.js";
import type { CatalogItem } from "../kit/artifacts.js";
import { popularFallbacks } from "./metrics.js";

export type ListKind = RankedListKind;

/** The overall list's category name in keys and in the static lists. */
export { ALL_CATEGORIES };

export interface RankedItem {
  itemId: string;
  score: number;
}

export interface ListRequest {
  kind: ListKind;
  /** A category, or ALL_CATEGORIES. */
  category: string;
}

/** One Redis read: a list's key and how many items to read. */
interface ListRead {
  key: string;
  count: number;
}

/** Lists held at once: two kinds per category and count, far above any catalogue's categories. */
const MAX_HELD_LISTS = 10_000;

export interface RankedList extends ListRequest {
  /** Shared by every request the read answers: never changed in place. */
  items: readonly RankedItem[];
  /** Why the list came from the catalogue instead of Redis, when it did. */
  fallback?: "redis_unavailable" | "empty";
}

/** The feature service's key for a list (the contract in the kit). */
export function listKey({ kind, category }: ListRequest): string {
  return rankedListKey(kind, category);
}

/** The catalogue's popularity per category and overall, best first: the lists' fallback. */
export function staticPopularity(catalog: readonly CatalogItem[]): Map<string, RankedItem[]> {
  const lists = new Map<string, RankedItem[]>([[ALL_CATEGORIES, []]]);
  for (const item of catalog) {
    const ranked = { itemId: item.itemId, score: item.popularity };
    lists.get(ALL_CATEGORIES)!.push(ranked);
    if (!lists.has(item.category)) lists.set(item.category, []);
    lists.get(item.category)!.push(ranked);
  }
  for (const list of lists.values()) list.sort((a, b) => b.score - a.score || (a.itemId < b.itemId ? -1 : 1));
  return lists;
}

/**
 * Popular and trending lists: Redis sorted sets the feature service maintains
 * (recsys:<popular|trending>:<category|all>, higher score first), read together
 * (auto-pipelined: one round trip per node, since on Redis Cluster the lists live in
 * different slots). When Redis is down, slow or a list is empty, that list comes
 * from the catalogue's static popularity instead: a degraded answer, never an error.
 *
 * The feature service republishes the lists every few seconds, so a read is held for
 * cacheMs and answers every request in that time (0: every request reads). Then the
 * next request reads again, and the requests that come meanwhile share its read
 * (lru-cache's fetch); a failed read is not held, so they fall back as without a hold.
 */
export class PopularLists {
  private readonly redis: RedisClient;
  private redisDown = false;
  /** Replies by key and count: the items, best first; [] for a list nobody published. */
  private readonly held: LRUCache<string, readonly RankedItem[], ListRead> | undefined;

  constructor(
    settings: RedisSettings,
    timeoutMs: number,
    private readonly fallback: Map<string, RankedItem[]>,
    private readonly log: Logger,
    cacheMs: number,
  ) {
    // Fail fast, no resend: the fallback answers at once. Failures are reported per read, below.
    this.redis = createRedis(settings, { commandTimeoutMs: timeoutMs, name: "retrieval-popular", maxRetriesPerRequest: 0 });
    this.redis.on("ready", () => {
      if (this.redisDown) this.log.info("redis is back: popular lists come from it again");
      this.redisDown = false;
    });
    this.held =
      cacheMs > 0
        ? new LRUCache<string, readonly RankedItem[], ListRead>({
            max: MAX_HELD_LISTS,
            ttl: cacheMs,
            fetchMethod: (_key, _stale, { context }) => this.readRedis(context),
          })
        : undefined;
  }

  /** Up to `count` items of each list, best first, in request order. */
  async read(requests: readonly ListRequest[], count: number): Promise<RankedList[]> {
    const replies = await Promise.allSettled(requests.map((request) => this.readHeld({ key: listKey(request), count })));
    return requests.map((request, i) => {
      const reply = replies[i]!;
      if (reply.status === "rejected") return this.fromCatalog(request, count, "redis_unavailable", reply.reason as Error);
      if (reply.value.length === 0) return this.fromCatalog(request, count, "empty");
      return { ...request, items: reply.value };
    });
  }

  private async readHeld(list: ListRead): Promise<readonly RankedItem[]> {
    if (!this.held) return this.readRedis(list);
    const items = await this.held.fetch(`${list.count} ${list.key}`, { context: list });
    if (!items) throw new Error(`no answer for ${list.key}`);
    return items;
  }

  private async readRedis({ key, count }: ListRead): Promise<RankedItem[]> {
    const flat = await this.redis.zrevrange(key, 0, count - 1, "WITHSCORES");
    const items: RankedItem[] = [];
    for (let j = 0; j + 1 < flat.length; j += 2) items.push({ itemId: flat[j]!, score: Number(flat[j + 1]) });
    return items;
  }

  async close(): Promise<void> {
    await closeRedis(this.redis);
  }

  private fromCatalog(request: ListRequest, count: number, reason: "redis_unavailable" | "empty", err?: Error): RankedList {
    popularFallbacks.inc({ kind: request.kind, reason });
    if (reason === "redis_unavailable" && !this.redisDown) {
      this.redisDown = true;
      this.log.warn({ err: err?.message }, "redis unavailable: popular lists fall back to the catalogue's static popularity");
    } else if (reason === "empty") {
      this.log.debug({ key: listKey(request) }, "empty list: using the catalogue's static popularity");
    }
    return { ...request, items: (this.fallback.get(request.category) ?? []).slice(0, count), fallback: reason };
  }
}
