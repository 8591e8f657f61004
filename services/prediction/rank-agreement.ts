// How far two rankings of one request agree: the mirrored shadow's diff (shadow.ts) and
// the canary controller's paired calls measure it the same way.

/** |A ∩ B| / |A ∪ B| of two top lists. */
export function jaccard(a: readonly string[], b: readonly string[]): number {
  const setA = new Set(a);
  const common = b.filter((x) => setA.has(x)).length;
  const union = setA.size + b.length - common;
  return union === 0 ? 1 : common / union;
}

/** Rank-biased overlap (Webber et al.) to the lists' depth, p = 0.9, scaled so that equal lists score 1. */
export function rankBiasedOverlap(a: readonly string[], b: readonly string[], p = 0.9): number {
  const depth = Math.min(a.length, b.length);
  if (depth === 0) return 1;
  let sum = 0;
  let weight = 0;
  for (let d = 1; d <= depth; d++) {
    const seen = new Set(a.slice(0, d));
    const agreement = b.slice(0, d).filter((x) => seen.has(x)).length / d;
    sum += p ** (d - 1) * agreement;
    weight += p ** (d - 1);
  }
  return sum / weight;
}

/** Mean |score b - score a| over the items both lists hold; null when they share none. */
export function scoreDrift(a: readonly { itemId: string; score: number }[], b: readonly { itemId: string; score: number }[]): number | null {
  const scores = new Map(a.map((i) => [i.itemId, i.score]));
  const diffs = b.filter((i) => scores.has(i.itemId)).map((i) => Math.abs(i.score - scores.get(i.itemId)!));
  return diffs.length ? diffs.reduce((s, d) => s + d, 0) / diffs.length : null;
}
