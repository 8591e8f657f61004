import { randomUUID } from "node:crypto";
import { Cluster } from "ioredis";
import { LRUCache } from "lru-cache";
import type { Logger } from "../kit/index.js";
import { closeRedis, createRedis, type RedisClient, type RedisSettings } from "../kit/redis.js";
import { cacheLookups } from "./metrics.js";

export interface CachedItem {
  itemId: string;
  score: number;
  category: string;
  explanation: string;
}

/** A computed prediction as both cache levels store it. */
export interface CachedPrediction {
  items: CachedItem[];
  /** Epoch milliseconds of the computation. */
  computedAt: number;
  modelVersions: Record<string, string>;
  experimentId: string;
  variant: string;
  /** True when every ranked candidate is stored (fewer than the cache depth existed). */
  complete: boolean;
  featureAgeSeconds: number;
}

/**
 * Where a prediction lives: one Redis hash per user, one field per (context bucket,
 * variant, model versions), so dropping a user is one DEL and a model swap or a new
 * variant never serves another's answer.
 */
export interface CacheKey {
  userId: string;
  bucket: string;
  variant: string;
  models: string;
}

export type CacheLevelName = "l1" | "l2";

export interface CacheHit {
  entry: CachedPrediction;
  level: CacheLevelName;
  /** Older than the freshness window: serve, and recompute in the background. */
  stale: boolean;
  /** For a fallback hit: the context bucket the entry was computed for. */
  bucket: string;
}

export interface CacheOptions {
  /** REDIS_URL, and REDIS_CLUSTER_NODES for a Redis Cluster. */
  redis: RedisSettings;
  redisTimeoutMs: number;
  l1MaxEntries: number;
  l1TtlMs: number;
  freshSeconds: number;
  staleSeconds: number;
  version: string;
  log: Logger;
}

const PREFIX = "recsys:pred:u:";
const CHANNEL = "recsys:pred:invalidate";
const fieldOf = (key: CacheKey) => `${key.bucket}|${key.variant}|${key.models}`;
const l1KeyOf = (userId: string, field: string) => `${userId}\u0000${field}`;

/**
 * Two-level prediction cache. L1 is an in-process LRU bounded in entries and age;
 * L2 is Redis, shared by every instance, kept for freshness + staleness and written
 * through on every computation. Entries carry their computation time: fresh ones
 * are served as they are, stale ones are served and flagged so the caller refreshes
 * them. Redis errors and timeouts count as misses: the cache never fails a request.
 * Invalidation drops L2 and is broadcast (Redis pub/sub) to every instance's L1.
 */
export class PredictionCache {
  private readonly l1: LRUCache<string, CachedPrediction>;
  /** L1 keys by user, kept in step by the LRU's dispose hook, for per-user drops and fallbacks. */
  private readonly l1ByUser = new Map<string, Set<string>>();
  private readonly redis: RedisClient;
  private readonly subscriber: RedisClient;
  private readonly instanceId = randomUUID();
  /** L2 writes not yet answered, so close() lets them land. */
  private readonly writes = new Set<Promise<void>>();
  private readonly freshMs: number;
  private readonly maxAgeMs: number;

  constructor(private readonly options: CacheOptions) {
    this.freshMs = options.freshSeconds * 1000;
    this.maxAgeMs = (options.freshSeconds + options.staleSeconds) * 1000;
    this.l1 = new LRUCache<string, CachedPrediction>({
      max: options.l1MaxEntries,
      ttl: options.l1TtlMs,
      dispose: (_value, key) => {
        const userId = key.slice(0, key.indexOf("\u0000"));
        const keys = this.l1ByUser.get(userId);
        keys?.delete(key);
        if (keys?.size === 0) this.l1ByUser.delete(userId);
      },
    });
    // No resend: a slow or absent Redis is a miss within the command timeout, never a hang.
    this.redis = createRedis(options.redis, { commandTimeoutMs: options.redisTimeoutMs, maxRetriesPerRequest: 0, name: "prediction-cache" });
    this.subscriber = createRedis(options.redis, { commandTimeoutMs: options.redisTimeoutMs, subscriber: true, name: "prediction-cache-invalidations" });
    let healthy = true;
    const onError = (err: Error) => {
      if (healthy) options.log.warn({ err: err.message }, "prediction cache: Redis unavailable, serving without L2");
      healthy = false;
    };
    this.redis.on("error", onError);
    this.redis.on("ready", () => {
      if (!healthy) options.log.info("prediction cache: Redis back");
      healthy = true;
    });
    this.subscriber.subscribe(CHANNEL).catch(() => {});
    this.subscriber.on("message", (_channel: string, message: string) => this.onInvalidation(message));
  }

  /**
   * Waits until Redis answers, at most timeoutMs; never throws (until then, and
   * whenever Redis is down, L2 counts as a miss).
   */
  async connect(timeoutMs: number): Promise<boolean> {
    const ready = (client: RedisClient) =>
      client.status === "ready" ? Promise.resolve() : new Promise<void>((resolve) => client.once("ready", () => resolve()));
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), timeoutMs)));
    const connected = await Promise.race([Promise.all([ready(this.redis), ready(this.subscriber)]).then(() => true), timeout]);
    clearTimeout(timer);
    return connected;
  }

  private age(entry: CachedPrediction, now: number): number {
    return now - entry.computedAt;
  }

  /** The entry for exactly this key: L1, then L2 (which refills L1). Expired entries are misses. */
  async get(key: CacheKey): Promise<CacheHit | undefined> {
    const field = fieldOf(key);
    const now = Date.now();
    const version = this.options.version;
    const inL1 = this.l1.get(l1KeyOf(key.userId, field));
    if (inL1 && this.age(inL1, now) < this.maxAgeMs) {
      const stale = this.age(inL1, now) >= this.freshMs;
      cacheLookups.inc({ version, level: "l1", result: stale ? "stale" : "hit" });
      return { entry: inL1, level: "l1", stale, bucket: key.bucket };
    }
    cacheLookups.inc({ version, level: "l1", result: "miss" });
    let raw: string | null;
    try {
      raw = await this.redis.hget(PREFIX + key.userId, field);
    } catch {
      cacheLookups.inc({ version, level: "l2", result: "error" });
      return undefined;
    }
    const entry = raw ? (JSON.parse(raw) as CachedPrediction) : undefined;
    if (!entry || this.age(entry, now) >= this.maxAgeMs) {
      cacheLookups.inc({ version, level: "l2", result: "miss" });
      return undefined;
    }
    const stale = this.age(entry, now) >= this.freshMs;
    cacheLookups.inc({ version, level: "l2", result: stale ? "stale" : "hit" });
    this.setL1(key.userId, field, entry);
    return { entry, level: "l2", stale, bucket: key.bucket };
  }

  /**
   * Any servable entry of the user, for the fallback ladder: the same bucket and
   * variant first, then the same bucket, then the newest. L2 first (shared, the
   * longest memory), then this instance's L1 when Redis cannot answer.
   */
  async anyForUser(key: CacheKey): Promise<CacheHit | undefined> {
    const now = Date.now();
    const candidates: { field: string; entry: CachedPrediction; level: CacheLevelName }[] = [];
    try {
      const all = await this.redis.hgetall(PREFIX + key.userId);
      for (const [field, raw] of Object.entries(all)) candidates.push({ field, entry: JSON.parse(raw) as CachedPrediction, level: "l2" });
    } catch {
      for (const l1Key of this.l1ByUser.get(key.userId) ?? []) {
        const entry = this.l1.get(l1Key);
        if (entry) candidates.push({ field: l1Key.slice(l1Key.indexOf("\u0000") + 1), entry, level: "l1" });
      }
    }
    const [bucket, variant] = [key.bucket, key.variant];
    const rank = (field: string) => {
      const [b, v] = field.split("|");
      return (b === bucket ? 2 : 0) + (v === variant ? 1 : 0);
    };
    const best = candidates
      .filter((c) => this.age(c.entry, now) < this.maxAgeMs)
      .sort((a, b) => rank(b.field) - rank(a.field) || b.entry.computedAt - a.entry.computedAt)[0];
    if (!best) return undefined;
    return { entry: best.entry, level: best.level, stale: this.age(best.entry, now) >= this.freshMs, bucket: best.field.split("|")[0]! };
  }

  /** Write-through: L1 now, L2 in the background (a failed write only costs a future miss). */
  set(key: CacheKey, entry: CachedPrediction): Promise<void> {
    const field = fieldOf(key);
    this.setL1(key.userId, field, entry);
    const hashKey = PREFIX + key.userId;
    const write: Promise<void> = this.redis
      .multi()
      .hset(hashKey, field, JSON.stringify(entry))
      .expire(hashKey, Math.ceil(this.maxAgeMs / 1000))
      .exec()
      .then(
        () => undefined,
        () => undefined,
      )
      .finally(() => this.writes.delete(write));
    this.writes.add(write);
    return write;
  }

  private setL1(userId: string, field: string, entry: CachedPrediction): void {
    const key = l1KeyOf(userId, field);
    this.l1.set(key, entry);
    let keys = this.l1ByUser.get(userId);
    if (!keys) this.l1ByUser.set(userId, (keys = new Set()));
    keys.add(key);
  }

  private dropL1(userIds: string[] | "all"): number {
    if (userIds === "all") {
      const removed = this.l1.size;
      this.l1.clear();
      return removed;
    }
    let removed = 0;
    for (const userId of userIds) {
      for (const key of [...(this.l1ByUser.get(userId) ?? [])]) if (this.l1.delete(key)) removed++;
    }
    return removed;
  }

  private onInvalidation(message: string): void {
    const { origin, users } = JSON.parse(message) as { origin: string; users: string[] | "all" };
    if (origin !== this.instanceId) this.dropL1(users);
  }

  /**
   * Drops the users' predictions (or all) from this L1 and from L2, and tells the
   * other instances to drop theirs. Throws when Redis cannot be reached: an admin
   * must know the shared cache was not cleared.
   */
  async invalidate(users: string[] | "all"): Promise<{ l1Removed: number; l2Removed: number }> {
    const l1Removed = this.dropL1(users);
    let l2Removed = 0;
    // One UNLINK per key: a user's hash is its own hash slot, and a multi-key command across slots fails on a cluster.
    const unlink = async (keys: string[]) => (await Promise.all(keys.map((key) => this.redis.unlink(key)))).reduce((sum, n) => sum + n, 0);
    if (users === "all") {
      // SCAN walks one node's keys: on a cluster, every master's.
      for (const node of this.redis instanceof Cluster ? this.redis.nodes("master") : [this.redis]) {
        let cursor = "0";
        do {
          const [next, keys] = await node.scan(cursor, "MATCH", `${PREFIX}*`, "COUNT", 1000);
          cursor = next;
          l2Removed += await unlink(keys);
        } while (cursor !== "0");
      }
    } else {
      for (let i = 0; i < users.length; i += 1000) l2Removed += await unlink(users.slice(i, i + 1000).map((u) => PREFIX + u));
    }
    await this.redis.publish(CHANNEL, JSON.stringify({ origin: this.instanceId, users }));
    return { l1Removed, l2Removed };
  }

  /** Lets pending L2 writes land (each bounded by the command timeout), then closes. */
  async close(): Promise<void> {
    await Promise.all(this.writes);
    await Promise.all([closeRedis(this.redis), closeRedis(this.subscriber)]);
  }
}
