import { LRUCache } from "lru-cache";
import { cacheLookups } from "./metrics.js";

export interface HotEntityCacheOptions {
  /** Entities (per view) kept; 0 disables the cache. */
  maxEntities: number;
  batchTtlMs: number;
  streamTtlMs: number;
  /**
   * An entity Redis held nothing of: kept briefly (cold ids still skip Redis), since a
   * materialisation (another process) may write it any moment.
   */
  absentTtlMs: number;
  /** The clock TTLs are measured on (tests pass their own); default performance.now. */
  clock?: { now(): number };
}

/**
 * The most requested entities' decoded state, so hot users and items skip Redis.
 * Bounded in size (LRU) and in time: stream state lives a fraction of a second, so a
 * new event is visible within the freshness target; batch rows live longer, as they
 * only change when a materialisation runs. Absent entities are cached too, so cold
 * ids do not hammer Redis either, but briefly: cached for the batch TTL, ids read
 * before a materialisation wrote them would stay absent that long after it.
 */
export class HotEntityCache {
  private readonly lru: LRUCache<string, { value: unknown }> | undefined;

  constructor(private readonly options: HotEntityCacheOptions) {
    this.lru = options.maxEntities > 0 ? new LRUCache({ max: options.maxEntities, ...(options.clock ? { perf: options.clock, ttlResolution: 0 } : {}) }) : undefined;
  }

  /** Values for ids in order: cached ones, then `load` for the rest (each distinct id once). */
  async getMany<T>(
    source: "batch" | "stream",
    view: string,
    ids: readonly string[],
    load: (missing: string[]) => Promise<(T | undefined)[]>,
  ): Promise<(T | undefined)[]> {
    const lru = this.lru;
    if (!lru) return load([...ids]);
    const out = new Array<T | undefined>(ids.length);
    const missingAt = new Map<string, number[]>();
    for (let i = 0; i < ids.length; i++) {
      const key = `${view}\u0000${ids[i]}`;
      const cached = lru.get(key);
      if (cached) out[i] = cached.value as T | undefined;
      else {
        const at = missingAt.get(ids[i]!);
        if (at) at.push(i);
        else missingAt.set(ids[i]!, [i]);
      }
    }
    const hits = ids.length - [...missingAt.values()].reduce((n, at) => n + at.length, 0);
    if (hits > 0) cacheLookups.inc({ source, result: "hit" }, hits);
    if (missingAt.size === 0) return out;
    cacheLookups.inc({ source, result: "miss" }, ids.length - hits);
    const missing = [...missingAt.keys()];
    const loaded = await load(missing);
    const ttl = source === "batch" ? this.options.batchTtlMs : this.options.streamTtlMs;
    missing.forEach((id, j) => {
      lru.set(`${view}\u0000${id}`, { value: loaded[j] }, { ttl: loaded[j] === undefined ? Math.min(ttl, this.options.absentTtlMs) : ttl });
      for (const i of missingAt.get(id)!) out[i] = loaded[j];
    });
    return out;
  }

  /** Forgets entities this process just wrote, so its own next read sees the write. */
  forget(view: string, ids: Iterable<string>): void {
    for (const id of ids) this.lru?.delete(`${view}\u0000${id}`);
  }
}
