// The canary's evidence and its arithmetic: what the prediction apps' /metrics say per
// version (answers by rung and cache level, stage latency histograms), confidence
// bounds on rates and their differences, and how alike two rankings are.

/** A Prometheus text exposition, reduced to the series of one metric family: labels and value. */
export function series(text: string, name: string): { labels: Record<string, string>; value: number }[] {
  const out: { labels: Record<string, string>; value: number }[] = [];
  const pattern = new RegExp(`^${name}\\{([^}]*)\\} (\\S+)$`);
  for (const line of text.split("\n")) {
    const match = pattern.exec(line);
    if (!match) continue;
    const labels = Object.fromEntries([...match[1]!.matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((m) => [m[1]!, m[2]!]));
    out.push({ labels, value: Number(match[2]) });
  }
  return out;
}

/**
 * Stages that run only when the prediction cache has no answer: their latency compares
 * misses with misses. Not item_features: the app keeps item features in a cache of its
 * own, cold in a new instance, so that stage would compare v1's hits with v2's misses.
 */
export const missStages = ["features", "candidates", "rank"] as const;

/** One version's counters, as read at one moment; subtract two to get a step's. */
export interface AppCounters {
  /** Answers by cache level ("l1", "l2", "miss") and rung ("primary", "cached"...). */
  answers: Record<string, Record<string, number>>;
  /** Cumulative bucket counts per stage, by upper bound in seconds (Infinity last). */
  stages: Record<string, { le: number; count: number }[]>;
  /** Mirrored (edge shadow) pairs this app compared: counts and the sums of their per-pair figures. */
  mirrored: MirroredCounters;
}

export interface MirroredCounters {
  compared: number;
  fallback: number;
  overlapSum: number;
  rboSum: number;
  driftSum: number;
  driftCount: number;
}

const sum = (samples: { value: number }[]) => samples.reduce((s, x) => s + x.value, 0);

export async function readAppCounters(metricsUrl: string): Promise<AppCounters> {
  return appCounters(await fetch(metricsUrl, { signal: AbortSignal.timeout(5000) }).then((r) => r.text()));
}

/** The counters in one scrape of an app's /metrics (one scrape is one consistent moment). */
export function appCounters(text: string): AppCounters {
  const answers: AppCounters["answers"] = {};
  for (const { labels, value } of series(text, "recsys_prediction_answers_total")) {
    const level = (answers[labels.cache ?? "unspecified"] ??= {});
    level[labels.rung ?? "unknown"] = (level[labels.rung ?? "unknown"] ?? 0) + value;
  }
  const stages: AppCounters["stages"] = {};
  for (const { labels, value } of series(text, "recsys_prediction_stage_seconds_bucket")) {
    const le = labels.le === "+Inf" ? Infinity : Number(labels.le);
    (stages[labels.stage ?? ""] ??= []).push({ le, count: value });
  }
  for (const buckets of Object.values(stages)) buckets.sort((a, b) => a.le - b.le);
  const pairs = series(text, "recsys_prediction_shadow_pairs_total");
  const mirrored: MirroredCounters = {
    compared: sum(pairs.filter((p) => p.labels.result === "compared")),
    fallback: sum(pairs.filter((p) => p.labels.result === "fallback")),
    overlapSum: sum(series(text, "recsys_prediction_shadow_overlap_sum")),
    rboSum: sum(series(text, "recsys_prediction_shadow_rbo_sum")),
    driftSum: sum(series(text, "recsys_prediction_shadow_score_drift_sum")),
    driftCount: sum(series(text, "recsys_prediction_shadow_score_drift_count")),
  };
  return { answers, stages, mirrored };
}

/** What happened between two readings. */
export function countersSince(now: AppCounters, before: AppCounters): AppCounters {
  const answers: AppCounters["answers"] = {};
  for (const [level, rungs] of Object.entries(now.answers)) {
    answers[level] = Object.fromEntries(Object.entries(rungs).map(([rung, n]) => [rung, n - (before.answers[level]?.[rung] ?? 0)]));
  }
  const stages: AppCounters["stages"] = {};
  for (const [stage, buckets] of Object.entries(now.stages)) {
    const old = new Map((before.stages[stage] ?? []).map((b) => [b.le, b.count]));
    stages[stage] = buckets.map((b) => ({ le: b.le, count: b.count - (old.get(b.le) ?? 0) }));
  }
  const mirrored = Object.fromEntries(Object.entries(now.mirrored).map(([k, v]) => [k, v - before.mirrored[k as keyof MirroredCounters]])) as unknown as MirroredCounters;
  return { answers, stages, mirrored };
}

/** Wilson score interval of a proportion, at z standard errors. */
export function wilson(successes: number, n: number, z: number): { low: number; high: number } {
  if (n === 0) return { low: 0, high: 1 };
  const p = successes / n;
  const centre = p + (z * z) / (2 * n);
  const spread = z * Math.sqrt((p * (1 - p)) / n + (z * z) / (4 * n * n));
  const scale = 1 + (z * z) / n;
  return { low: Math.max(0, (centre - spread) / scale), high: Math.min(1, (centre + spread) / scale) };
}

/** Newcombe's hybrid score interval of p2 - p1 (two independent proportions). */
export function differenceInterval(x2: number, n2: number, x1: number, n1: number, z: number): { diff: number; low: number; high: number } {
  const p2 = n2 ? x2 / n2 : 0;
  const p1 = n1 ? x1 / n1 : 0;
  const a = wilson(x2, n2, z);
  const b = wilson(x1, n1, z);
  const diff = p2 - p1;
  return {
    diff,
    low: diff - Math.sqrt((p2 - a.low) ** 2 + (b.high - p1) ** 2),
    high: diff + Math.sqrt((a.high - p2) ** 2 + (p1 - b.low) ** 2),
  };
}

/** Normal-approximation interval of a mean. */
export function meanInterval(values: number[], z: number): { mean: number; low: number; high: number } {
  const n = values.length;
  if (n === 0) return { mean: NaN, low: -Infinity, high: Infinity };
  const mean = values.reduce((s, v) => s + v, 0) / n;
  const sd = n > 1 ? Math.sqrt(values.reduce((s, v) => s + (v - mean) ** 2, 0) / (n - 1)) : Infinity;
  const half = (z * sd) / Math.sqrt(n);
  return { mean, low: mean - half, high: mean + half };
}

/**
 * How much more often v2's calls of a stage are slow than v1's, where slow means past
 * v1's `quantile` in the step (the histogram bucket bound where v1's share reaches it).
 * Null when v1 saw nothing or its quantile lies in the open last bucket.
 */
export function slowerShare(v1: { le: number; count: number }[] | undefined, v2: { le: number; count: number }[] | undefined, quantile: number) {
  const n1 = v1?.at(-1)?.count ?? 0;
  const n2 = v2?.at(-1)?.count ?? 0;
  if (!v1 || n1 === 0) return null;
  const bound = v1.find((b) => b.count >= quantile * n1)!;
  if (bound.le === Infinity) return null;
  const within = (buckets: { le: number; count: number }[] | undefined) => buckets?.find((b) => b.le === bound.le)?.count ?? 0;
  return { thresholdMs: bound.le * 1000, n1, slow1: n1 - within(v1), n2, slow2: n2 - within(v2) };
}

