import type { CandidateSource } from "../../gen/recsys/retrieval/v1/retrieval_pb.js";

export interface SourcedItem {
  itemId: string;
  category: string;
  /** The source's own score: similarity for ANN and item-to-item, list score for popular and trending. */
  score: number;
}

/** One source's items, best first, each item once. */
export interface SourceResult {
  source: CandidateSource;
  items: SourcedItem[];
}

export interface MergedCandidate {
  itemId: string;
  category: string;
  /** Reciprocal rank fusion over the item's sources. */
  score: number;
  sources: { source: CandidateSource; score: number }[];
}

/** The usual reciprocal rank fusion constant (Cormack et al., 2009): damps the weight of the very top ranks. */
export const RRF_K = 60;

/**
 * Several ranked lists of one source as one: round robin by rank, each item once
 * (its best rank wins), the first `limit` of them. Scores of different lists of a
 * source are not comparable (a category's counts are smaller than the overall
 * list's), ranks are.
 */
export function interleave(lists: readonly SourcedItem[][], limit = Infinity): SourcedItem[] {
  const seen = new Set<string>();
  const out: SourcedItem[] = [];
  const longest = Math.max(0, ...lists.map((list) => list.length));
  for (let rank = 0; rank < longest; rank++) {
    for (const list of lists) {
      const item = list[rank];
      if (item && !seen.has(item.itemId)) {
        if (out.length === limit) return out;
        seen.add(item.itemId);
        out.push(item);
      }
    }
  }
  return out;
}

/**
 * Merges the sources into k candidates, best first. Scores of different sources
 * are on different scales (similarities, event counts), so candidates are ordered
 * by reciprocal rank fusion: the sum over an item's sources of 1 / (RRF_K + rank).
 * An item several sources agree on rises; every source's own score is kept.
 */
export function fuseCandidates(results: readonly SourceResult[], k: number): MergedCandidate[] {
  const merged = new Map<string, MergedCandidate>();
  for (const { source, items } of results) {
    items.forEach((item, rank) => {
      let candidate = merged.get(item.itemId);
      if (!candidate) {
        candidate = { itemId: item.itemId, category: item.category, score: 0, sources: [] };
        merged.set(item.itemId, candidate);
      }
      candidate.score += 1 / (RRF_K + rank + 1);
      candidate.sources.push({ source, score: item.score });
    });
  }
  return [...merged.values()].sort((a, b) => b.score - a.score || (a.itemId < b.itemId ? -1 : 1)).slice(0, k);
}

export interface CandidateColumnsShape {
  itemIds: string[];
  scores: Uint8Array;
  categoryNames: string[];
  categoryIndex: number[];
  sourceMasks: number[];
}

/** Merged candidates as the CandidateColumns message: float32 scores, categories by index, sources as bit masks. */
export function toColumns(candidates: readonly MergedCandidate[]): CandidateColumnsShape {
  const scores = new Float32Array(candidates.length);
  const categoryCode = new Map<string, number>();
  const categoryIndex: number[] = [];
  const sourceMasks: number[] = [];
  candidates.forEach((candidate, i) => {
    scores[i] = candidate.score;
    let code = categoryCode.get(candidate.category);
    if (code === undefined) categoryCode.set(candidate.category, (code = categoryCode.size));
    categoryIndex.push(code);
    sourceMasks.push(candidate.sources.reduce((mask, { source }) => mask | (1 << source), 0));
  });
  return {
    itemIds: candidates.map((c) => c.itemId),
    // Typed arrays are in the platform's byte order; every platform Node runs on here is little-endian.
    scores: new Uint8Array(scores.buffer),
    categoryNames: [...categoryCode.keys()],
    categoryIndex,
    sourceMasks,
  };
}
