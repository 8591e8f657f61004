import { z } from "zod";
import { assignerConfigShape } from "../experiment/assigner.js";
import { baseConfigShape, loadConfig } from "../kit/index.js";
import { DRIFT_MIN_ROWS, DRIFT_SAMPLE_RATE, DRIFT_WINDOW_ROWS } from "./drift.js";
import { ACCURACY_MIN_LISTS, ATTRIBUTION_MS } from "./online-accuracy.js";

const address = z.string().regex(/^[^\s:]+:\d+$/, "expected host:port");
const positiveInt = (fallback: number) => z.coerce.number().int().min(1).default(fallback);

export const predictionConfigShape = {
  ...baseConfigShape,
  /** REDIS_URL (experiment definitions and the L2 cache), HOLDOUT_*, EXPERIMENTS_REFRESH_MS: the in-process assigner's settings. */
  ...assignerConfigShape,
  /** Deployed version of this service (v1 | v2): a label on metrics and metadata, so the canary can compare. */
  SERVICE_VERSION: z.enum(["v1", "v2"]).default("v1"),
  /** Upstreams, host:port (in the mesh: this sidecar's egress listeners). Unset: that rung of the ladder is skipped. */
  FEATURE_ADDR: address.optional(),
  RETRIEVAL_ADDR: address.optional(),
  EXPERIMENT_ADDR: address.optional(),
  /** Budget for one prediction-cache Redis command; a slow Redis counts as a miss, never a slow answer. */
  REDIS_TIMEOUT_MS: positiveInt(25),
  /** models/<name>/<version>/ as the training pipeline writes them. */
  MODELS_DIR: z.string().default("models"),
  /** How often to look for newer model versions and swap them in; 0 turns watching off. */
  MODELS_POLL_MS: z.coerce.number().int().min(0).default(10_000),
  /** The oldest training cut-off (manifest created_at) a serving model may have before RecsysModelTooOld fires; 0: no maximum. */
  MODEL_MAX_AGE_S: z.coerce.number().int().min(0).default(7 * 86_400),
  /** ONNX Runtime intra-op threads per model. */
  ORT_THREADS: positiveInt(1),

  /** Deadline when the caller sends no grpc-timeout. */
  DEFAULT_DEADLINE_MS: positiveInt(500),
  /** Below this remaining budget the full pipeline is skipped for a cheaper rung. */
  PRIMARY_MIN_BUDGET_MS: positiveInt(30),
  /** Candidates ranked per request. */
  CANDIDATES_K: positiveInt(200),

  /** L1: in-process LRU of predictions. */
  L1_MAX_ENTRIES: positiveInt(50_000),
  L1_TTL_MS: positiveInt(60_000),
  /** A cached prediction is fresh this long, then served stale while it is recomputed. */
  CACHE_FRESH_S: positiveInt(3600),
  /** How long past freshness a stale prediction may still be served (stale-while-revalidate, fallback). */
  CACHE_STALE_S: positiveInt(6 * 3600),
  /** Items stored per cached prediction; requests for more are computed. */
  CACHE_DEPTH: positiveInt(50),

  /**
   * Micro-batching: rows per ONNX run (past ~3,000 rows the MLP gets slower per row),
   * how long a request waits for company before taking the second run slot, and the
   * p99 the batcher adapts to.
   */
  BATCH_MAX_ROWS: positiveInt(4096),
  BATCH_MAX_WAIT_MS: z.coerce.number().min(0).default(2),
  BATCH_P99_TARGET_MS: positiveInt(25),
  /** ONNX runs of one model in flight at once: one running in its worker, one queued behind it. */
  BATCH_MAX_IN_FLIGHT: positiveInt(2),

  /**
   * The popular rung reads a local copy of the feature service's popular lists, so it
   * answers while retrieval is down: refreshed this often from Redis, this many items
   * per list, each refresh's read bounded by POPULAR_READ_TIMEOUT_MS.
   */
  POPULAR_REFRESH_MS: positiveInt(5_000),
  POPULAR_DEPTH: positiveInt(200),
  POPULAR_READ_TIMEOUT_MS: positiveInt(1_000),

  /** Admission: computations running at once; beyond that requests queue by priority. */
  MAX_CONCURRENT: positiveInt(64),
  /** Queueing delay past which LOW is refused (RESOURCE_EXHAUSTED) and NORMAL answered from a cheaper rung. */
  SHED_QUEUE_DELAY_MS: positiveInt(50),

  /**
   * Exposures of served variants, sent to the experiment service in the background:
   * at most this many queued (beyond, new ones are dropped and counted), this many
   * per RecordExposures call, a partial batch sent after this long.
   */
  EXPOSURE_QUEUE_MAX: positiveInt(10_000),
  EXPOSURE_BATCH_SIZE: z.coerce.number().int().min(1).max(10_000).default(500),
  EXPOSURE_FLUSH_MS: positiveInt(200),

  /**
   * Model monitoring: the share of ranked rows copied into each model set's drift
   * window and the window's size (sampling noise alone gives a PSI of about
   * 9 / DRIFT_WINDOW_ROWS); how long after an answer a click on one of its items still
   * counts (training's label window), and how many finished answers with a click and a
   * non-click the online figures need before they are exported.
   */
  DRIFT_SAMPLE_RATE: z.coerce.number().gt(0).max(1).default(DRIFT_SAMPLE_RATE),
  DRIFT_WINDOW_ROWS: z.coerce.number().int().min(DRIFT_MIN_ROWS).default(DRIFT_WINDOW_ROWS),
  ACCURACY_ATTRIBUTION_S: positiveInt(ATTRIBUTION_MS / 1000),
  ACCURACY_MIN_LISTS: positiveInt(ACCURACY_MIN_LISTS),
};

export type PredictionConfig = ReturnType<typeof loadPredictionConfig>;

export function loadPredictionConfig(env: Record<string, string | undefined>) {
  return loadConfig(predictionConfigShape, env);
}
