import { Counter, Gauge, Histogram } from "prom-client";
import { registry } from "../kit/index.js";

// Every series carries `version` (SERVICE_VERSION), so the canary controller can
// compare v1 and v2 side by side.

export const predictions = new Counter({
  name: "recsys_prediction_answers_total",
  help: "Predict answers by fallback rung (primary, cached, simplified, popular, static) and cache level.",
  labelNames: ["version", "rung", "cache"] as const,
  registers: [registry],
});

export const fallbacks = new Counter({
  name: "recsys_prediction_fallback_total",
  help: "Times a rung below primary answered, by rung and the reason the rungs above it could not.",
  labelNames: ["version", "rung", "reason"] as const,
  registers: [registry],
});

export const cacheLookups = new Counter({
  name: "recsys_prediction_cache_lookups_total",
  help: "Prediction cache lookups by level (l1, l2) and result (hit, stale, miss, error).",
  labelNames: ["version", "level", "result"] as const,
  registers: [registry],
});

export const itemFeatureLookups = new Counter({
  name: "recsys_prediction_item_feature_cache_total",
  help: "Item feature reads served by the in-process item feature cache (hit; refresh: served and renewed in the background) or read by the request from the feature service (miss).",
  labelNames: ["version", "result"] as const,
  registers: [registry],
});

export const batchedCallRequests = new Histogram({
  name: "recsys_prediction_batched_call_requests",
  help: "Requests per call to a dependency (call: user_features, candidates): the requests of one event-loop turn share a call, so under load a call carries several.",
  labelNames: ["version", "call"] as const,
  buckets: [1, 2, 4, 8, 16, 32, 64],
  registers: [registry],
});

export const computations = new Counter({
  name: "recsys_prediction_computations_total",
  help: "Predictions computed (after coalescing), by reason: request or background refresh.",
  labelNames: ["version", "reason"] as const,
  registers: [registry],
});

export const coalesced = new Counter({
  name: "recsys_prediction_coalesced_total",
  help: "Requests that joined an identical computation already in flight.",
  labelNames: ["version"] as const,
  registers: [registry],
});

export const shed = new Counter({
  name: "recsys_prediction_shed_total",
  help: "Requests shed by admission, by priority and action (rejected or degraded).",
  labelNames: ["version", "priority", "action"] as const,
  registers: [registry],
});

export const stageSeconds = new Histogram({
  name: "recsys_prediction_stage_seconds",
  help: "Latency of each Predict stage.",
  labelNames: ["version", "stage"] as const,
  buckets: [0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
  registers: [registry],
});

export const modelSeconds = new Histogram({
  name: "recsys_prediction_model_seconds",
  help: "ONNX run latency per batch, by model.",
  labelNames: ["version", "model"] as const,
  buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1],
  registers: [registry],
});

export const batchRows = new Histogram({
  name: "recsys_prediction_batch_rows",
  help: "Rows per ONNX run, by model.",
  labelNames: ["version", "model"] as const,
  buckets: [1, 50, 100, 200, 400, 800, 1600, 3200, 6400, 12800],
  registers: [registry],
});

export const batchRequests = new Histogram({
  name: "recsys_prediction_batch_requests",
  help: "Requests merged into one ONNX run, by model.",
  labelNames: ["version", "model"] as const,
  buckets: [1, 2, 4, 8, 16, 32, 64, 128],
  registers: [registry],
});

export const batcherLimits = new Gauge({
  name: "recsys_prediction_batcher_limit",
  help: "The micro-batcher's current adaptive limits (max_rows, max_wait_ms), by model.",
  labelNames: ["version", "model", "limit"] as const,
  registers: [registry],
});

export const modelsLoaded = new Gauge({
  name: "recsys_prediction_model_info",
  help: "1 for each model version serving now.",
  labelNames: ["version", "model", "model_version"] as const,
  registers: [registry],
});

export const popularRefreshes = new Counter({
  name: "recsys_prediction_popular_refresh_total",
  help: "Refreshes of the local copy of the popular lists from Redis, by result (ok; empty: Redis held no list, the copy was kept; error).",
  labelNames: ["version", "result"] as const,
  registers: [registry],
});

export const popularListAge = new Gauge({
  name: "recsys_prediction_popular_list_age_seconds",
  help: "Age of the local copy of the popular lists (since its last successful refresh), as of the last refresh attempt; absent before the first success.",
  labelNames: ["version"] as const,
  registers: [registry],
});
