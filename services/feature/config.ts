import { hostname } from "node:os";
import { z } from "zod";
import { baseConfigShape, loadConfig } from "../kit/index.js";
import { redisConfigShape } from "../kit/redis.js";

const int = (min: number) => z.coerce.number().int().min(min);

export const featureConfigShape = {
  ...baseConfigShape,
  ...redisConfigShape,
  /** A Redis command that has not answered by then fails (UNAVAILABLE), instead of hanging. */
  REDIS_COMMAND_TIMEOUT_MS: int(10).default(500),
  /**
   * Partitions of the data by entity id, one Cluster hash slot each (keys.ts). Same value
   * in every process, fixed for the life of the data; on Cluster, a few per primary.
   */
  PARTITIONS: int(1).max(1024).default(1),
  /** The server runs the aggregator's workers itself; false when `services/feature/aggregator.ts` runs them. */
  AGGREGATOR_IN_PROCESS: z.stringbool().default(true),
  /** Aggregator workers (consumers of the event stream) per process; two overlap one batch's Redis time with the next one's preparation. */
  AGGREGATOR_WORKERS: int(1).max(64).default(2),
  /**
   * Consumer name of this process's workers (suffixed -w<i>). Stable across restarts, so
   * a restarted process finds the entries it had in hand at once; a process that never
   * comes back has its entries reclaimed after AGGREGATOR_CLAIM_IDLE_MS.
   */
  AGGREGATOR_CONSUMER_NAME: z.string().regex(/^[\w.-]{1,64}$/).default(hostname()),
  /** Entries per apply script: small enough that one script holds Redis for a few ms only. */
  AGGREGATOR_BATCH_SIZE: int(1).max(10_000).default(100),
  AGGREGATOR_BLOCK_MS: int(10).default(100),
  /** Pending entries idle this long are reclaimed from their (presumed dead) consumer. */
  AGGREGATOR_CLAIM_IDLE_MS: int(100).default(30_000),
  /** How often the popular/trending lists are republished, and lag metrics and stream trimming run. */
  POPULAR_PUBLISH_INTERVAL_MS: int(50).default(5_000),
  POPULAR_TOP_K: int(1).max(100_000).default(500),
  /** Item catalogue (JSON lines) for events without a category; default models/catalog/v1/items.jsonl when present. */
  CATALOG_PATH: z.string().min(1).optional(),
  /**
   * Replicas that must confirm an ingested batch (Redis WAIT) before it is accepted. 1 on a
   * Redis Cluster with replicas: a master killed right after answering cannot take an
   * accepted event with it. 0 (single Redis): the master's answer is enough.
   */
  INGEST_REPLICA_ACKS: int(0).max(5).default(0),
  /** How long an event id is remembered; a resend within it is ignored. */
  EVENT_DEDUPE_TTL_S: int(1).default(90_000),
  /** Events stamped further ahead than this (client clock skew) are rejected. */
  MAX_EVENT_FUTURE_S: int(0).default(300),
  /** Hot-entity cache: entities kept in the service; 0 turns the cache off. */
  CACHE_MAX_ENTITIES: int(0).default(100_000),
  /** Batch rows change with materialisation runs only. */
  CACHE_BATCH_TTL_MS: int(1).default(10_000),
  /** Stream features must be visible within a second of ingestion. */
  CACHE_STREAM_TTL_MS: int(1).default(250),
  /** An entity with no row yet: a materialisation writing it is seen within this long. */
  CACHE_ABSENT_TTL_MS: int(1).default(250),
};

export type FeatureConfig = ReturnType<typeof loadFeatureConfig>;

export function loadFeatureConfig(env: Record<string, string | undefined> = process.env) {
  return loadConfig(featureConfigShape, env);
}
