import type { Client } from "@connectrpc/connect";
import { LRUCache } from "lru-cache";
import type { FeatureValue, RequestContext } from "../../gen/recsys/common/v1/common_pb.js";
import { FeatureStatus, type EntityFeatures, type FeatureResult, type FeatureService } from "../../gen/recsys/feature/v1/feature_pb.js";
import { ModelLoadError } from "./models.js";
import { localRequestFeatures, type UserRequest } from "./context.js";
import { batchedCallRequests, itemFeatureLookups } from "./metrics.js";
import { TurnBatcher } from "./turn-batcher.js";

/** A feature value as plain data: numbers (int64 and bool too), strings, lists and maps. */
export type PlainValue = number | string | string[] | Record<string, number>;
/** Features keyed "view:feature". */
export type FeatureBag = Record<string, PlainValue>;

export interface UserFeatures {
  user: FeatureBag;
  /** On-demand request features by name ("hour_sin"). */
  request: Record<string, number>;
  /** Age in seconds of the oldest stored user feature used; 0 when none was stored. */
  ageSeconds: number;
  /** live: read now; cached: the last read, kept for fallbacks; default: neither was available. */
  source: "live" | "cached" | "default";
}

/** What one candidate row is built from. */
export interface ItemInput {
  category: string;
  features: FeatureBag;
  /** User-item embedding similarity in [-1, 1]; 0 without embeddings. */
  embeddingDot: number;
}

/**
 * User features the rankers need (views or single features). The request view's
 * features are computed here from each request's context (localRequestFeatures, the
 * feature service's definitions), so one read can carry users of different requests.
 */
export const USER_FEATURE_REFS = ["user_profile", "user_stream:clicks_1h", "user_stream:last_click_category"];
/** Item features the rankers need. */
export const ITEM_FEATURE_REFS = ["item_profile", "item_stream:events_24h"];

/** What a column may need besides the user and the item: facts of the model's training. */
export interface ModelFacts {
  /** Days the batch features (item_log_popularity) count events over: the manifest's training_data.split.feature_window_days. */
  featureWindowDays: number;
}

const TRENDING_CAP = 10;

function plain(value: FeatureValue | undefined): PlainValue | undefined {
  const kind = value?.kind;
  switch (kind?.case) {
    case "doubleValue":
      return kind.value;
    case "int64Value":
      return Number(kind.value);
    case "boolValue":
      return kind.value ? 1 : 0;
    case "stringValue":
      return kind.value;
    case "stringList":
      return kind.value.values;
    case "doubleMap":
      return kind.value.values;
    default:
      return undefined;
  }
}

function bagOf(features: Record<string, FeatureResult>): FeatureBag {
  const bag: FeatureBag = {};
  for (const [ref, result] of Object.entries(features)) {
    const value = plain(result.value);
    if (value !== undefined) bag[ref] = value;
  }
  return bag;
}

const num = (value: PlainValue | undefined): number => (typeof value === "number" && Number.isFinite(value) ? value : 0);
const str = (value: PlainValue | undefined): string => (typeof value === "string" ? value : "");

/**
 * How each ranker input column is computed from the user, request and item
 * features, by the names the training pipeline writes into the manifest
 * (training/README.md defines them). A model asking for a column not here is
 * refused at load.
 */
const COLUMNS: Record<string, (user: UserFeatures, item: ItemInput, facts: ModelFacts) => number> = {
  user_log_events: (u) => num(u.user["user_profile:user_log_events"]),
  user_ctr: (u) => num(u.user["user_profile:user_ctr"]),
  item_log_popularity: (_u, i) => num(i.features["item_profile:item_log_popularity"]),
  item_ctr: (_u, i) => num(i.features["item_profile:item_ctr"]),
  user_category_affinity: (u, i) => {
    const affinity = u.user["user_profile:category_affinity"];
    return typeof affinity === "object" && !Array.isArray(affinity) ? (affinity[i.category] ?? 0) : 0;
  },
  embedding_dot: (_u, i) => i.embeddingDot,
  hour_sin: (u) => u.request.hour_sin ?? 0,
  hour_cos: (u) => u.request.hour_cos ?? 1,
  device_mobile: (u) => u.request.device_mobile ?? 0,
  device_desktop: (u) => u.request.device_desktop ?? 0,
  device_tablet: (u) => u.request.device_tablet ?? 0,
  user_clicks_1h: (u) => num(u.user["user_stream:clicks_1h"]),
  user_recent_category_match: (u, i) => (i.category !== "" && str(u.user["user_stream:last_click_category"]) === i.category ? 1 : 0),
  // Events of the last 24 h over the item's smoothed daily average, (events + 1) / window days,
  // with events = expm1(item_log_popularity) when the profile has no daily average of its own.
  item_trending: (_u, i, facts) => {
    const stored = i.features["item_profile:item_daily_avg_events"];
    const dailyAverage = typeof stored === "number" ? stored : Math.exp(num(i.features["item_profile:item_log_popularity"])) / facts.featureWindowDays;
    const last24h = num(i.features["item_stream:events_24h"]);
    return dailyAverage > 0 ? Math.min(TRENDING_CAP, last24h / dailyAverage) : 0;
  },
};

/** Throws a ModelLoadError naming every column the serving side cannot compute. */
export function assertComputable(model: string, featureNames: string[]): void {
  const unknown = featureNames.filter((name) => !(name in COLUMNS));
  if (unknown.length > 0) throw new ModelLoadError(model, `the service cannot compute features ${unknown.join(", ")}`);
}

/** The ranker input matrix: one row per item, columns in the manifest's feature order. */
export function buildRows(featureNames: string[], facts: ModelFacts, user: UserFeatures, items: ItemInput[]): Float32Array {
  const columns = featureNames.map((name) => COLUMNS[name]!);
  const rows = new Float32Array(items.length * columns.length);
  let offset = 0;
  for (const item of items) {
    for (const column of columns) rows[offset++] = column(user, item, facts);
  }
  return rows;
}

/** The user's top categories by affinity, best first. */
export function topCategories(user: UserFeatures, n: number): string[] {
  const affinity = user.user["user_profile:category_affinity"];
  if (typeof affinity !== "object" || Array.isArray(affinity)) return [];
  return Object.entries(affinity)
    .sort((a, b) => b[1] - a[1])
    .slice(0, n)
    .map(([category]) => category);
}

/** Categories the user's features name as preferred: the top `n` by affinity, then the last clicked one. */
export function preferredCategories(user: UserFeatures, n: number): string[] {
  const lastClicked = str(user.user["user_stream:last_click_category"]);
  return [...new Set([...topCategories(user, n), ...(lastClicked ? [lastClicked] : [])])];
}

export interface FeatureReaderOptions {
  userCacheEntries: number;
  /** How long a user's last features are kept for fallbacks. */
  userCacheTtlMs: number;
  itemCacheEntries: number;
  /**
   * Item features change slowly (batch profiles, 24 h counts): an entry older than
   * this is still served, and read again in the background, batched with others.
   */
  itemRefreshMs: number;
  /** An entry older than this is not served: the request reads it (the feature service was unreachable that long). */
  itemMaxAgeMs: number;
  /**
   * An item the feature service holds no feature of (not materialised yet, or new) is
   * served as defaults for this long after the read, then read again by the request.
   */
  itemUnknownMs: number;
  version: string;
  /** Milliseconds since the epoch (default Date.now); tests move it. */
  now?: () => number;
}

interface CachedBag {
  bag: FeatureBag;
  readAt: number;
  /** When the entry stops being served: itemMaxAgeMs after the read, itemUnknownMs for an item the service held nothing of. */
  expiresAt: number;
}

/** One read carries at most this many users; the rest of a turn's users go in further reads. */
const USER_BATCH = 64;

/** One background read carries at most this many items (the request's limit is 2000). */
const REFRESH_BATCH = 1000;
/** A background read that takes longer is given up; the entries stay queued for the next one. */
const REFRESH_TIMEOUT_MS = 2000;

/**
 * Reads features from the feature service with the caller's budget, and keeps two
 * local caches: item features (shared by every request; an entry past its refresh
 * age is served while a background read, batched across requests, renews it, so
 * a request only waits for items it has never seen) and each user's last read
 * (served by the simplified rung when the feature service is down).
 */
export class FeatureReader {
  private readonly users: LRUCache<string, UserFeatures>;
  private readonly items: LRUCache<string, CachedBag>;
  private readonly refreshQueue = new Set<string>();
  private refreshing = false;
  /** The user reads of one event-loop turn share a call (turn-batcher.ts). */
  private readonly userReads: TurnBatcher<string, EntityFeatures | undefined>;
  private readonly now: () => number;

  constructor(
    private readonly client: Client<typeof FeatureService> | undefined,
    private readonly options: FeatureReaderOptions,
  ) {
    this.users = new LRUCache({ max: options.userCacheEntries, ttl: options.userCacheTtlMs });
    this.items = new LRUCache({ max: options.itemCacheEntries });
    this.now = options.now ?? Date.now;
    const callSizes = batchedCallRequests.labels({ version: options.version, call: "user_features" });
    this.userReads = new TurnBatcher((userIds, timeoutMs) => this.readUsers(userIds, timeoutMs), USER_BATCH, (requests) => callSizes.observe(requests));
  }

  /** User and request features, live. Throws when the feature service cannot answer within the budget. */
  async user({ userId, context }: UserRequest, timeoutMs: number): Promise<UserFeatures> {
    if (!this.client) throw new Error("no feature service configured (FEATURE_ADDR)");
    const entity = await this.userReads.load(userId, timeoutMs);
    const stored = Object.values(entity?.features ?? {}).filter((r) => r.status === FeatureStatus.PRESENT);
    const features: UserFeatures = {
      user: bagOf(entity?.features ?? {}),
      request: localRequestFeatures(context),
      ageSeconds: stored.reduce((oldest, r) => Math.max(oldest, r.ageSeconds), 0),
      source: "live",
    };
    this.users.set(userId, features);
    return features;
  }

  /** The users' features in id order (undefined where the answer has none), in one call. */
  private async readUsers(userIds: string[], timeoutMs: number): Promise<(EntityFeatures | undefined)[]> {
    const response = await this.client!.getOnlineFeatures({ userIds: [...new Set(userIds)], featureRefs: USER_FEATURE_REFS }, { timeoutMs });
    const byId = new Map(response.users.map((entity) => [entity.entityId, entity]));
    return userIds.map((id) => byId.get(id));
  }

  /** The user's last live features with this request's context, else defaults: never fails. */
  cachedUser({ userId, context }: UserRequest): UserFeatures {
    const cached = this.users.get(userId);
    const request = localRequestFeatures(context);
    if (cached) return { ...cached, request, source: "cached" };
    return { user: {}, request, ageSeconds: 0, source: "default" };
  }

  /** Item features, from the local cache; the items it does not hold in one read. Throws when that read fails. */
  async itemFeatures(itemIds: string[], timeoutMs: number): Promise<Map<string, FeatureBag>> {
    const found = new Map<string, FeatureBag>();
    const missing: string[] = [];
    const now = this.now();
    let stale = 0;
    for (const id of itemIds) {
      const cached = this.items.get(id);
      if (!cached || now >= cached.expiresAt) {
        missing.push(id);
        continue;
      }
      found.set(id, cached.bag);
      if (now - cached.readAt >= this.options.itemRefreshMs) {
        stale++;
        this.refreshQueue.add(id);
      }
    }
    const { version } = this.options;
    itemFeatureLookups.inc({ version, result: "hit" }, found.size - stale);
    if (stale > 0) {
      itemFeatureLookups.inc({ version, result: "refresh" }, stale);
      this.refreshInBackground();
    }
    if (missing.length === 0) return found;
    itemFeatureLookups.inc({ version, result: "miss" }, missing.length);
    for (const [id, bag] of (await this.readItems(missing, timeoutMs)).bags) found.set(id, bag);
    return found;
  }

  /**
   * Reads the given items' features into the cache, a batch at a time, so requests
   * after start-up find them held. Never fails: what it cannot read, requests read.
   * Returns how many of them the feature service held features of.
   */
  async prefetchItems(itemIds: readonly string[]): Promise<number> {
    let known = 0;
    for (let from = 0; from < Math.min(itemIds.length, this.options.itemCacheEntries); from += REFRESH_BATCH) {
      try {
        known += (await this.readItems(itemIds.slice(from, from + REFRESH_BATCH), REFRESH_TIMEOUT_MS)).known;
      } catch {
        break;
      }
    }
    return known;
  }

  /** Item features known locally (cache or nothing), for rungs that cannot wait. */
  cachedItemFeatures(itemIds: string[]): Map<string, FeatureBag> {
    return new Map(itemIds.map((id) => [id, this.items.get(id)?.bag ?? {}]));
  }

  /** Reads items into the cache; returns their features and how many the service held any feature of. */
  private async readItems(itemIds: string[], timeoutMs: number): Promise<{ bags: Map<string, FeatureBag>; known: number }> {
    if (!this.client) throw new Error("no feature service configured (FEATURE_ADDR)");
    const response = await this.client.getOnlineFeatures({ itemIds, featureRefs: ITEM_FEATURE_REFS }, { timeoutMs });
    const bags = new Map<string, FeatureBag>();
    const readAt = this.now();
    let known = 0;
    for (const entity of response.items) {
      const bag = bagOf(entity.features);
      // An empty answer is not kept like a real one: read before the store was loaded,
      // it would rank with default item features until a background refresh, 30 s on.
      const held = Object.values(entity.features).some((r) => r.status === FeatureStatus.PRESENT);
      if (held) known++;
      this.items.set(entity.entityId, { bag, readAt, expiresAt: readAt + (held ? this.options.itemMaxAgeMs : this.options.itemUnknownMs) });
      bags.set(entity.entityId, bag);
    }
    return { bags, known };
  }

  /** Renews queued entries, one batch at a time; a failed read leaves them queued, served as they are. */
  private refreshInBackground(): void {
    if (this.refreshing || this.refreshQueue.size === 0) return;
    this.refreshing = true;
    const batch = [...this.refreshQueue].slice(0, REFRESH_BATCH);
    this.readItems(batch, REFRESH_TIMEOUT_MS).then(
      () => {
        batch.forEach((id) => this.refreshQueue.delete(id));
        this.refreshing = false;
        // A full batch left means more are due now; a smaller rest waits for the next request.
        if (this.refreshQueue.size >= REFRESH_BATCH) this.refreshInBackground();
      },
      () => (this.refreshing = false),
    );
  }
}
