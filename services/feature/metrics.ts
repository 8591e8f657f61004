import { Counter, Gauge, Histogram } from "prom-client";
import { registry } from "../kit/index.js";

export const eventsIngested = new Counter({
  name: "recsys_feature_events_ingested_total",
  help: "Events received by IngestEvents/IngestEventStream: accepted (appended) or duplicate (event id seen before).",
  labelNames: ["result"] as const,
  registers: [registry],
});

export const outcomesUnpublished = new Counter({
  name: "recsys_feature_outcomes_unpublished_total",
  help: "Accepted clicks and purchases that could not be copied to the outcome stream (prediction's online accuracy misses them; the events themselves are kept).",
  registers: [registry],
});

export const ingestBatchesRejected = new Counter({
  name: "recsys_feature_ingest_batches_rejected_total",
  help: "Event batches rejected whole because an event was invalid.",
  registers: [registry],
});

export const eventsApplied = new Counter({
  name: "recsys_feature_events_applied_total",
  help: "Stream entries processed by the aggregator: applied, late (older than the longest window: counted in nothing), already_applied (acknowledged by another worker), undecodable.",
  labelNames: ["result"] as const,
  registers: [registry],
});

export const freshnessSeconds = new Histogram({
  name: "recsys_feature_freshness_seconds",
  help: "Event time to the event's effect being visible in Redis (applied by the aggregator).",
  buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 300],
  registers: [registry],
});

export const streamLength = new Gauge({
  name: "recsys_feature_stream_length",
  help: "Entries in the event stream (acknowledged ones are trimmed periodically).",
  labelNames: ["partition"] as const,
  registers: [registry],
});

export const streamPending = new Gauge({
  name: "recsys_feature_stream_pending",
  help: "Entries delivered to an aggregator worker and not yet applied.",
  labelNames: ["partition"] as const,
  registers: [registry],
});

export const streamLag = new Gauge({
  name: "recsys_feature_stream_lag",
  help: "Entries not yet delivered to any aggregator worker.",
  labelNames: ["partition"] as const,
  registers: [registry],
});

export const rowsWritten = new Counter({
  name: "recsys_feature_rows_written_total",
  help: "Batch feature rows written (WriteFeatures, materialisation): written, or stale (a newer row is stored).",
  labelNames: ["view", "result"] as const,
  registers: [registry],
});

export const cacheLookups = new Counter({
  name: "recsys_feature_cache_lookups_total",
  help: "Hot-entity cache lookups by view source (batch, stream) and result (hit, miss).",
  labelNames: ["source", "result"] as const,
  registers: [registry],
});

export const readSeconds = new Histogram({
  name: "recsys_feature_read_seconds",
  help: "GetOnlineFeatures time spent reading the store (cache and Redis), per request.",
  buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
  registers: [registry],
});

export const redisUp = new Gauge({
  name: "recsys_feature_redis_up",
  help: "1 when the last PING to Redis answered, else 0.",
  registers: [registry],
});
