import type { EmbeddingArtifacts } from "../kit/artifacts.js";
import type { CachedItem } from "./cache.js";
import { buildRows, type FeatureBag, type ItemInput, type UserFeatures } from "./features.js";
import type { ModelSet } from "./model-store.js";
import { EMBEDDING } from "./variants.js";

/** A candidate to rank, with where it came from. */
export interface RankCandidate {
  itemId: string;
  category: string;
  /** Retrieval sources ("ann", "item_to_item", "popular", "trending", "requested"). */
  sources: string[];
}

/** Inner product of the user's (looked up once per request) and the item's embeddings; 0 when either is unknown. */
function embeddingDot(embeddings: EmbeddingArtifacts, userRow: number | undefined, itemId: string): number {
  const itemRow = embeddings.items.rowOf.get(itemId);
  if (userRow === undefined || itemRow === undefined) return 0;
  const { dim } = embeddings;
  const u = embeddings.users.vectors;
  const v = embeddings.items.vectors;
  let dot = 0;
  for (let k = 0, a = userRow * dim, b = itemRow * dim; k < dim; k++) dot += u[a + k]! * v[b + k]!;
  return dot;
}

function rankerInputs(set: ModelSet, userId: string, user: UserFeatures, candidates: RankCandidate[], itemFeatures: Map<string, FeatureBag>) {
  const userRow = set.embeddings.users.rowOf.get(userId);
  const items: ItemInput[] = candidates.map((c) => ({
    category: c.category,
    features: itemFeatures.get(c.itemId) ?? {},
    embeddingDot: embeddingDot(set.embeddings, userRow, c.itemId),
  }));
  const rows = buildRows(set.featureNames, set.facts, user, items);
  set.drift.observe(rows, items.length);
  return { items, rows };
}

/**
 * Ensemble score per candidate: the weighted mean of the variant's rankers (each
 * run through its micro-batcher, all at once) and the embedding similarity mapped
 * to [0, 1]. Weights naming models this set does not have are left out; throws
 * when none is left (a model error: the ladder takes over).
 */
export async function ensembleScores(
  set: ModelSet,
  weights: Record<string, number>,
  userId: string,
  user: UserFeatures,
  candidates: RankCandidate[],
  itemFeatures: Map<string, FeatureBag>,
): Promise<Float32Array> {
  const members = Object.entries(weights).filter(([name, w]) => w > 0 && (name === EMBEDDING || set.rankers.has(name)));
  if (!members.some(([name]) => name !== EMBEDDING)) {
    throw new Error(`no ranker of the variant's ensemble (${Object.keys(weights).join(", ")}) is loaded`);
  }
  const { items, rows } = rankerInputs(set, userId, user, candidates, itemFeatures);
  const outputs = await Promise.all(
    members.map(([name]) =>
      name === EMBEDDING ? Float32Array.from(items, (i) => (i.embeddingDot + 1) / 2) : set.rankers.get(name)!.batcher.submit(rows, items.length),
    ),
  );
  const total = members.reduce((sum, [, w]) => sum + w, 0);
  const scores = new Float32Array(items.length);
  members.forEach(([, w], m) => {
    const out = outputs[m]!;
    for (let i = 0; i < scores.length; i++) scores[i] = scores[i]! + (w / total) * out[i]!;
  });
  return scores;
}

/** The cheapest ranker of the set (GBDT when there is one): the simplified rung's model. */
export function cheapestRanker(set: ModelSet): string {
  return set.rankers.has("ranker-gbdt") ? "ranker-gbdt" : [...set.rankers.keys()][0]!;
}

/** One ranker alone over whatever features are at hand. */
export async function simplifiedScores(
  set: ModelSet,
  userId: string,
  user: UserFeatures,
  candidates: RankCandidate[],
  itemFeatures: Map<string, FeatureBag>,
): Promise<Float32Array> {
  const { items, rows } = rankerInputs(set, userId, user, candidates, itemFeatures);
  return set.rankers.get(cheapestRanker(set))!.batcher.submit(rows, items.length);
}

/**
 * Best first, with at most maxPerCategory items of a category among the diverse
 * picks; when diversity leaves fewer than n, the best skipped items follow them,
 * so every prefix of the answer is as diverse as the candidates allow.
 */
export function diversify<T extends { category: string; score: number }>(scored: T[], n: number, maxPerCategory: number): T[] {
  const sorted = [...scored].sort((a, b) => b.score - a.score);
  const picked: T[] = [];
  const skipped: T[] = [];
  const perCategory = new Map<string, number>();
  for (const item of sorted) {
    if (picked.length === n) break;
    const count = perCategory.get(item.category) ?? 0;
    if (item.category !== "" && count >= maxPerCategory) {
      skipped.push(item);
      continue;
    }
    perCategory.set(item.category, count + 1);
    picked.push(item);
  }
  for (const item of skipped) {
    if (picked.length === n) break;
    picked.push(item);
  }
  return picked;
}

/** Why an item is shown, from where it came from and the user's tastes. */
function explain(candidate: RankCandidate, favouriteCategories: string[]): string {
  if (candidate.sources.includes("item_to_item")) return "similar to items you viewed recently";
  if (candidate.sources.includes("ann")) {
    return favouriteCategories.includes(candidate.category) ? `matches your interest in ${candidate.category}` : "picked for your tastes";
  }
  if (candidate.sources.includes("trending")) return `trending in ${candidate.category}`;
  if (candidate.sources.includes("popular")) return `popular in ${candidate.category}`;
  return "ranked for you";
}

/** Scores into ranked, diversified answer items. */
export function toRankedItems(
  candidates: RankCandidate[],
  scores: Float32Array,
  n: number,
  maxPerCategory: number,
  favouriteCategories: string[],
): CachedItem[] {
  const scored = candidates.map((c, i) => ({ candidate: c, category: c.category, score: scores[i]! }));
  return diversify(scored, n, maxPerCategory).map(({ candidate, score }) => ({
    itemId: candidate.itemId,
    category: candidate.category,
    score,
    explanation: explain(candidate, favouriteCategories),
  }));
}
