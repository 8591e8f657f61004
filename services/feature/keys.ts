// Every Redis key the feature service reads or writes, in one place.
//
// Redis Cluster: the data is split into partitions by entity id (FNV-1a of the id,
// modulo PARTITIONS), and every key of partition k carries the hash tag {p<k>}, so it
// all sits in one slot. That is what lets one command or script cover many entities:
// MGET of 200 rows, one script reading 200 states, the ingest script appending a batch
// with its dedupe markers, the aggregator's apply script touching users, items and
// list buckets of one batch. Events are partitioned by item id, so an item's stream
// state lives in one partition and a user's is spread over all (summed at read).
// Set PARTITIONS to a few times the number of primaries to spread the slots. The
// published popular/trending lists keep their contract names (no tag); their helper
// keys embed the list's name as the tag, which puts them in the list's own slot.

const tag = (partition: number) => `recsys:{p${partition}}`;

/** Batch feature row of one entity, in the entity's partition: a JSON string. */
export const rowKey = (partition: number, view: string, entityId: string) => `${tag(partition)}:fv:${view}:${entityId}`;

/** The event stream of a partition, read by the aggregator's consumer group. */
export const streamKey = (partition: number) => `${tag(partition)}:events`;
/** Marks an event id as ingested (SET NX with a TTL). */
export const seenKey = (partition: number, eventId: string) => `${tag(partition)}:seen:${eventId}`;
/** Bucketed counters and latest-event fields of one entity: a hash. */
export const stateKey = (partition: number, view: string, entityId: string) => `${tag(partition)}:${view}:${entityId}`;
/** Latest distinct items of one entity: a sorted set scored by event time. ("-recent" keeps it apart from every view name.) */
export const recentKey = (partition: number, view: string, entityId: string) => `${tag(partition)}:${view}-recent:${entityId}`;
/** Interactions per item within a category over the open window (hour buckets not yet expired): a sorted set. */
export const popularLiveKey = (partition: number, category: string) => `${tag(partition)}:popular:${category}`;
/** Interactions per item within a category in one hour (a hash), subtracted from the live set when the hour leaves the window. */
export const popularBucketKey = (partition: number, category: string, hour: number) => `${tag(partition)}:popular-hour:${category}:${hour}`;
/** Forward-decayed interaction scores against the landmark of one UTC day: a sorted set. */
export const trendingDayKey = (partition: number, category: string, day: number) => `${tag(partition)}:trending:${category}:${day}`;
/** Categories that had events in a partition: a set. */
export const categoriesKey = (partition: number) => `${tag(partition)}:categories`;

/** The category covering every item in the popular/trending lists. */
import { rankedListKey } from "../kit/ranked-lists.js";
export { ALL_CATEGORIES } from "../kit/ranked-lists.js";
/** Where items of no known category are counted (no list of its own; "~" is no category's). */
export const NO_CATEGORY = "~none";
/** Published list read by the retrieval service: member item id, higher score is better. */
export const popularKey = (category: string) => rankedListKey("popular", category);
export const trendingKey = (category: string) => rankedListKey("trending", category);
/** Catalogue popularity in [0, 1), added to the live counts when publishing. */
export const popularSeedKey = (category: string) => `{${popularKey(category)}}:seed`;
/** Live counts staged before they are merged into the published list. */
export const popularStagingKey = (category: string) => `{${popularKey(category)}}:staging`;
/** Held by the one aggregator publishing the lists this interval. */
export const publishLockKey = "recsys:aggregator:publish-lock";

/** Last committed line of a materialisation run of one file. */
export const checkpointKey = (fileId: string) => `recsys:materialize:checkpoint:${fileId}`;

/** FNV-1a: a stable partition for an entity id, the same in every process. */
export function partitionOf(entityId: string, partitions: number): number {
  if (partitions === 1) return 0;
  let hash = 0x811c9dc5;
  for (let i = 0; i < entityId.length; i++) {
    hash ^= entityId.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  return (hash >>> 0) % partitions;
}
