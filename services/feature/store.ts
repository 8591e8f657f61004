// The online store: batch rows and stream state in Redis, behind the hot-entity cache.
import type { FeatureValue } from "../../gen/recsys/common/v1/common_pb.js";
import { mergeStates, parseState, type EntityState } from "./aggregation.js";
import { HotEntityCache, type HotEntityCacheOptions } from "./cache.js";
import { decodeRow, encodeRow } from "./codec.js";
import { partitionOf, recentKey, rowKey, stateKey } from "./keys.js";
import { rowsWritten } from "./metrics.js";
import type { BatchView, JsonFeatureValue, StreamView } from "./registry.js";
import type { RedisClient } from "../kit/redis.js";

/**
 * Redis keeps a row this long past its TTL, so reads can say EXPIRED (and serve the
 * default) before the key disappears and they say DEFAULT. Expired values are never
 * served either way; the key's own expiry frees the memory.
 */
export const EXPIRED_GRACE_MS = 86_400_000;

/** A checked row, ready to store. */
export interface RowWrite {
  view: BatchView;
  entityId: string;
  eventTimeMs: number;
  values: Record<string, JsonFeatureValue>;
}

export interface DecodedRow {
  eventTimeMs: number;
  values: Map<string, FeatureValue>;
}

/** Write or read calls carry at most this many entities, so one script never blocks Redis for long. */
const CHUNK = 1_000;

/** Ids by partition, with where each sits in the input, in chunks of at most CHUNK. */
function groupByPartition<T>(items: readonly T[], partitionFor: (item: T) => number): { partition: number; items: T[]; at: number[] }[] {
  const groups = new Map<number, { partition: number; items: T[]; at: number[] }[]>();
  items.forEach((item, i) => {
    const partition = partitionFor(item);
    const chunks = groups.get(partition) ?? [];
    if (chunks.length === 0) groups.set(partition, chunks);
    let chunk = chunks[chunks.length - 1];
    if (!chunk || chunk.items.length >= CHUNK) chunks.push((chunk = { partition, items: [], at: [] }));
    chunk.items.push(item);
    chunk.at.push(i);
  });
  return [...groups.values()].flat();
}

export class OnlineStore {
  private readonly cache: HotEntityCache;

  constructor(
    readonly redis: RedisClient,
    private readonly partitions: number,
    cache: HotEntityCacheOptions,
  ) {
    this.cache = new HotEntityCache(cache);
  }

  /**
   * Writes rows, each guarded by its event time: a stored row with a newer event time
   * stays. Idempotent, so a retried or re-run write is harmless. One script per
   * partition (and per 1,000 rows).
   */
  async writeRows(rows: readonly RowWrite[]): Promise<{ written: number; stale: number }> {
    const written = new Array<boolean>(rows.length);
    await Promise.all(
      groupByPartition(rows, (row) => partitionOf(row.entityId, this.partitions)).map(async ({ partition, items, at }) => {
        const keys = items.map((row) => rowKey(partition, row.view.name, row.entityId));
        const args = items.flatMap((row) => {
          const deleteAt = row.view.ttlSeconds > 0 ? row.eventTimeMs + row.view.ttlSeconds * 1000 + EXPIRED_GRACE_MS : 0;
          return [String(row.eventTimeMs), encodeRow({ t: row.eventTimeMs, v: row.values }), String(deleteAt)];
        });
        const results = await this.redis.recsysWriteRows(keys.length, ...keys, ...args);
        results.forEach((ok, j) => (written[at[j]!] = ok === 1));
      }),
    );
    rows.forEach((row, i) => {
      rowsWritten.inc({ view: row.view.name, result: written[i] ? "written" : "stale" });
      this.cache.forget(row.view.name, [row.entityId]);
    });
    const count = written.filter(Boolean).length;
    return { written: count, stale: rows.length - count };
  }

  /** Batch rows of a view, in id order; undefined where none is stored. One MGET per partition. */
  readRows(view: BatchView, ids: readonly string[]): Promise<(DecodedRow | undefined)[]> {
    return this.cache.getMany("batch", view.name, ids, async (missing) => {
      const out = new Array<DecodedRow | undefined>(missing.length);
      await Promise.all(
        groupByPartition(missing, (id) => partitionOf(id, this.partitions)).map(async ({ partition, items, at }) => {
          const texts = await this.redis.mget(items.map((id) => rowKey(partition, view.name, id)));
          texts.forEach((text, j) => (out[at[j]!] = text === null ? undefined : decodeRow(text, view.features)));
        }),
      );
      return out;
    });
  }

  /**
   * Stream state of a view's entities, in id order; undefined for entities without
   * events. One script call per partition: an item's state lives in its own partition,
   * a user's is spread over all of them and summed here.
   */
  readStates(view: StreamView, ids: readonly string[]): Promise<(EntityState | undefined)[]> {
    const withRecent = view.features.some((f) => f.aggregation.kind === "recent_items");
    return this.cache.getMany("stream", view.name, ids, async (missing) => {
      const parts = missing.map(() => [] as (EntityState | undefined)[]);
      const everywhere = view.entity === "user" ? Array.from({ length: this.partitions }, (_, p) => p) : undefined;
      const lookups = everywhere
        ? everywhere.flatMap((p) => groupByPartition(missing, () => p))
        : groupByPartition(missing, (id) => partitionOf(id, this.partitions));
      await Promise.all(
        lookups.map(async ({ partition, items, at }) => {
          const keys = items.flatMap((id) =>
            withRecent ? [stateKey(partition, view.name, id), recentKey(partition, view.name, id)] : [stateKey(partition, view.name, id)],
          );
          const replies = await this.redis.recsysReadStates(keys.length, ...keys, withRecent ? "2" : "1");
          const per = withRecent ? 2 : 1;
          at.forEach((i, j) => parts[i]!.push(parseState(replies[j * per]!, withRecent ? replies[j * per + 1] : undefined)));
        }),
      );
      return parts.map(mergeStates);
    });
  }
}
