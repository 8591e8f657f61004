import { z } from "zod";
import { ConfigError, baseConfigShape, loadConfig } from "../kit/index.js";
import { redisConfigShape } from "../kit/redis.js";

const positiveInt = (fallback: number, max: number) => z.coerce.number().int().min(1).max(max).default(fallback);

export const retrievalConfigShape = {
  ...baseConfigShape,
  /** Root of the trained artifacts: <MODELS_DIR>/embeddings/<EMBEDDINGS_VERSION>/, <MODELS_DIR>/catalog/<CATALOG_VERSION>/. */
  MODELS_DIR: z.string().min(1).default("models"),
  EMBEDDINGS_VERSION: z.string().regex(/^[A-Za-z0-9._-]+$/).default("v1"),
  CATALOG_VERSION: z.string().regex(/^[A-Za-z0-9._-]+$/).default("v1"),
  /** Saved index snapshots and the upsert/delete log, per embeddings version. */
  RETRIEVAL_DATA_DIR: z.string().min(1).default(".run/retrieval"),
  /** Popular and trending lists maintained by the feature service. */
  ...redisConfigShape,
  /**
   * Replicas that agree: upserts and deletes go to a Redis Stream per embeddings version
   * that every replica applies in order (false: this process's own file log, for one replica).
   */
  REPLICATE_INDEX_OPS: z.stringbool().default(false),
  /** Bound on appending to and reading the replicated log. */
  INDEX_LOG_TIMEOUT_MS: positiveInt(2_000, 60_000),
  /** A write answers UNAVAILABLE if this replica has not applied it by then (it stays logged and is applied later). */
  INDEX_LOG_APPLY_WAIT_MS: positiveInt(10_000, 120_000),
  /** A popular-list read slower than this falls back to the catalogue's static popularity. */
  REDIS_TIMEOUT_MS: positiveInt(100, 10_000),
  /**
   * How long a popular or trending list read from Redis answers every request before it is
   * read again (0: every request reads). The feature service republishes them every 5 s.
   */
  POPULAR_CACHE_MS: z.coerce.number().int().min(0).max(60_000).default(1_000),
  HNSW_M: z.coerce.number().int().min(4).max(64).default(16),
  HNSW_EF_CONSTRUCTION: z.coerce.number().int().min(10).max(2000).default(100),
  /** Default search breadth; a request's ef may raise it up to HNSW_MAX_EF. */
  HNSW_EF_SEARCH: positiveInt(100, 4000),
  HNSW_MAX_EF: positiveInt(1000, 4000),
  /** Below this many live items every search is exact: as fast, and recall 1. */
  EXACT_SEARCH_BELOW: z.coerce.number().int().min(0).default(1000),
  /** GetCandidates defaults: ANN neighbours, popular and trending items each, neighbours per recent item. */
  CANDIDATES_ANN_K: positiveInt(200, 1000),
  CANDIDATES_POPULAR_K: positiveInt(50, 1000),
  CANDIDATES_ITEM_TO_ITEM_K: positiveInt(20, 1000),
  /** Categories of the user's recent items whose popular/trending lists are read. */
  CANDIDATES_TOP_CATEGORIES: z.coerce.number().int().min(0).max(20).default(3),
};

export type RetrievalConfig = ReturnType<typeof loadRetrievalConfig>;

export function loadRetrievalConfig(env: Record<string, string | undefined>) {
  const config = loadConfig(retrievalConfigShape, env);
  if (config.HNSW_EF_SEARCH > config.HNSW_MAX_EF) {
    throw new ConfigError(`invalid configuration: HNSW_EF_SEARCH (${config.HNSW_EF_SEARCH}) exceeds HNSW_MAX_EF (${config.HNSW_MAX_EF})`);
  }
  return config;
}
