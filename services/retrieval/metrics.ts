import { Counter, Gauge, Histogram } from "prom-client";
import { registry } from "../kit/index.js";
import type { ItemIndex } from "./item-index.js";

export const searchSeconds = new Histogram({
  name: "recsys_retrieval_search_seconds",
  help: "Time of one index search (HNSW or exact scan), without RPC overhead.",
  labelNames: ["mode", "filtered"] as const,
  buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
  registers: [registry],
});

export const sourceCandidates = new Histogram({
  name: "recsys_retrieval_source_candidates",
  help: "Candidates one source contributed to one GetCandidates call, before merging.",
  labelNames: ["source"] as const,
  buckets: [0, 1, 5, 10, 25, 50, 100, 200, 500, 1000],
  registers: [registry],
});

export const popularFallbacks = new Counter({
  name: "recsys_retrieval_popular_fallback_total",
  help: "Popular/trending list reads answered from the catalogue's static popularity instead of Redis.",
  labelNames: ["kind", "reason"] as const,
  registers: [registry],
});

export const rebuildSeconds = new Histogram({
  name: "recsys_retrieval_rebuild_seconds",
  help: "Time to rebuild (compact) the index and swap it in.",
  buckets: [0.1, 0.5, 1, 5, 15, 60, 300, 1200],
  registers: [registry],
});

export const rebuildReplayedOps = new Counter({
  name: "recsys_retrieval_rebuild_replayed_ops_total",
  help: "Upserts and deletes accepted during a rebuild and replayed on the new index before the swap.",
  registers: [registry],
});

export const replicatedOpsApplied = new Counter({
  name: "recsys_retrieval_replicated_ops_total",
  help: "Upserts and deletes applied from the replicated index log (every replica applies every one).",
  registers: [registry],
});

const indexItems = new Gauge({
  name: "recsys_retrieval_index_items",
  help: "Items in the live index: live, or deleted but still in the graph until compaction.",
  labelNames: ["state"] as const,
  registers: [registry],
});

const indexCapacity = new Gauge({
  name: "recsys_retrieval_index_capacity",
  help: "Items the live index holds before it grows.",
  registers: [registry],
});

const indexInfo = new Gauge({
  name: "recsys_retrieval_index_info",
  help: "The live index: 1 for its version and origin.",
  labelNames: ["version", "origin"] as const,
  registers: [registry],
});

/** Publishes the live index's size and version; call after every change. */
export function observeIndex(index: ItemIndex): void {
  indexItems.set({ state: "live" }, index.size);
  indexItems.set({ state: "deleted" }, index.deleted);
  indexCapacity.set(index.capacity);
  indexInfo.reset();
  indexInfo.set({ version: index.version, origin: index.origin }, 1);
}
