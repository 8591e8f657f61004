import { ALL_CATEGORIES, rankedListKey } from "../kit/ranked-lists.js";
import type { Logger } from "../kit/index.js";
import { closeRedis, createRedis, type RedisClient, type RedisSettings } from "../kit/redis.js";
import { popularListAge, popularRefreshes } from "./metrics.js";

export { ALL_CATEGORIES };

/**
 * The popular lists the feature service publishes (services/feature/README.md,
 * "Popular and trending lists"): a sorted set per category and one for "all",
 * member = item id, higher score = better, each replaced atomically.
 */
const listKey = (category: string) => rankedListKey("popular", category);

/** Lists read per refresh at most: "all" and this many categories less one. */
const MAX_LISTS = 1000;

export interface PopularItem {
  itemId: string;
  score: number;
}

export interface PopularCopyOptions {
  /** REDIS_URL, and REDIS_CLUSTER_NODES for a Redis Cluster. */
  redis: RedisSettings;
  /** Budget of each list's read in a refresh (all sent at once); off the request path, so generous. */
  readTimeoutMs: number;
  /** Items kept per list. */
  depth: number;
  /** The categories whose lists are read besides "all" (the serving catalogue's). */
  categories: () => Iterable<string>;
  /** SERVICE_VERSION, for metric labels. */
  version: string;
  log: Logger;
  /** Epoch milliseconds; tests move it. */
  now?: () => number;
}

/**
 * A recent copy of the popular lists, so the popular rung of the fallback ladder
 * does not share the failure it guards (retrieval down): refreshed from Redis in
 * the background, read from memory on the request path. A failed refresh keeps the
 * last good copy; its age is the metric recsys_prediction_popular_list_age_seconds.
 */
export class PopularCopy {
  private readonly redis: RedisClient;
  private lists = new Map<string, PopularItem[]>();
  private refreshedAt: number | undefined;
  private refreshing: Promise<boolean> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private failing = false;
  private readonly now: () => number;

  constructor(private readonly options: PopularCopyOptions) {
    this.now = options.now ?? Date.now;
    // No resend: a failed refresh keeps the last copy.
    this.redis = createRedis(options.redis, { commandTimeoutMs: options.readTimeoutMs, maxRetriesPerRequest: 0, name: "prediction-popular" });
  }

  /** The list of a category (or ALL_CATEGORIES), best first; undefined when there is none. */
  list(category: string): readonly PopularItem[] | undefined {
    return this.lists.get(category);
  }

  /** Seconds since the last successful refresh; undefined before the first. */
  ageSeconds(): number | undefined {
    return this.refreshedAt === undefined ? undefined : Math.max(0, (this.now() - this.refreshedAt) / 1000);
  }

  /** Resolves once Redis accepts commands, or after timeoutMs; never throws. */
  async connect(timeoutMs: number): Promise<boolean> {
    if (this.redis.status === "ready") return true;
    let timer: NodeJS.Timeout | undefined;
    let onReady: (() => void) | undefined;
    const connected = await new Promise<boolean>((resolve) => {
      onReady = () => resolve(true);
      this.redis.once("ready", onReady);
      timer = setTimeout(() => resolve(false), timeoutMs);
    });
    clearTimeout(timer);
    this.redis.off("ready", onReady!);
    return connected;
  }

  /**
   * Reads every list at once (one read per list: on a cluster the lists live on
   * different nodes) and swaps in what was read; a list that could not be read keeps
   * its last good copy, and when Redis holds no list at all, the whole copy stays. Concurrent calls share
   * one read. Never throws; resolves whether the copy is now fresh.
   */
  refresh(): Promise<boolean> {
    this.refreshing ??= this.read().finally(() => (this.refreshing = undefined));
    return this.refreshing;
  }

  /** Refreshes every intervalMs, off the request path. */
  start(intervalMs: number): void {
    if (intervalMs <= 0 || this.timer) return;
    this.timer = setInterval(() => void this.refresh(), intervalMs);
    this.timer.unref();
  }

  async close(): Promise<void> {
    clearInterval(this.timer);
    await closeRedis(this.redis);
  }

  private async read(): Promise<boolean> {
    const { version, depth, log } = this.options;
    const categories = [ALL_CATEGORIES, ...new Set(this.options.categories())].slice(0, MAX_LISTS);
    let result: "ok" | "empty" | "error" = "error";
    const replies = await Promise.allSettled(categories.map((category) => this.redis.zrevrange(listKey(category), 0, depth - 1, "WITHSCORES")));
    const read = new Map<string, PopularItem[]>();
    let failure: unknown;
    categories.forEach((category, i) => {
      const reply = replies[i]!;
      if (reply.status === "rejected") {
        failure ??= reply.reason;
        return;
      }
      const items: PopularItem[] = [];
      for (let j = 0; j + 1 < reply.value.length; j += 2) items.push({ itemId: reply.value[j]!, score: Number(reply.value[j + 1]) });
      if (items.length > 0) read.set(category, items);
    });
    if (failure === undefined && read.size === 0) {
      // No list at all is a Redis restarted empty or not yet seeded, not news: keep what we have.
      result = "empty";
    } else {
      const next = new Map<string, PopularItem[]>();
      categories.forEach((category, i) => {
        const list = replies[i]!.status === "rejected" ? this.lists.get(category) : read.get(category);
        if (list) next.set(category, list);
      });
      this.lists = next;
      if (failure === undefined) {
        this.refreshedAt = this.now();
        if (this.failing) log.info({ lists: next.size }, "popular lists: copy refreshed again");
        this.failing = false;
        result = "ok";
      } else {
        // The age metric keeps growing until every list is read again.
        if (!this.failing) log.warn({ err: (failure as Error).message }, "popular lists: refresh failed; keeping the last good copy of the lists not read");
        this.failing = true;
      }
    }
    popularRefreshes.inc({ version, result });
    const age = this.ageSeconds();
    if (age !== undefined) popularListAge.set({ version }, age);
    return result === "ok";
  }
}

export interface PopularPick extends PopularItem {
  category: string;
  /** From one of the user's preferred categories' lists. */
  preferred: boolean;
}

/**
 * Up to `depth` popular items for a user: the preferred categories' lists taken in
 * turn (best of each first), then the overall list; each item once, and only items
 * `categoryOf` knows (the catalogue: a list may name items since deleted).
 */
export function pickPopular(copy: PopularCopy, preferred: readonly string[], depth: number, categoryOf: (itemId: string) => string | undefined): PopularPick[] {
  const picks: PopularPick[] = [];
  const seen = new Set<string>();
  const take = (item: PopularItem, isPreferred: boolean) => {
    const category = categoryOf(item.itemId);
    if (category === undefined || seen.has(item.itemId) || picks.length >= depth) return;
    seen.add(item.itemId);
    picks.push({ ...item, category, preferred: isPreferred });
  };
  const lists = preferred.map((category) => copy.list(category) ?? []);
  const longest = Math.max(0, ...lists.map((list) => list.length));
  for (let i = 0; i < longest && picks.length < depth; i++) for (const list of lists) if (list[i]) take(list[i]!, true);
  for (const item of copy.list(ALL_CATEGORIES) ?? []) take(item, false);
  return picks;
}
