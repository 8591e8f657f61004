import { Gauge } from "prom-client";
import { registry } from "../kit/index.js";

/*
 * Online accuracy: what the served rankings achieve on live clicks, next to what
 * their models' manifests say they achieved offline.
 *
 * Predict reports each answer it served (user, items in served order with their
 * scores, variant, model versions); the click stream reports outcomes (user, item,
 * time). A served item is a positive when the same user clicks it within the
 * attribution window after it was served (30 minutes: training's label window), so
 * a list is final once that window has passed. Over the last finished lists of each
 * variant and model set, with the offline protocol (training/evaluation.py):
 *   auc      pooled over every served item (Mann-Whitney, ties count half)
 *   ndcg@10  binary gains, per list with a click and a non-click, in served order
 *   ctr@10   share of clicked items among the first min(10, length), same lists
 * and the ratio of each to the figure in the manifest of every ranker that served.
 * The offline lists are a user's whole validation window and the online ones one
 * answer, so ndcg@10 and ctr@10 compare the same statistic over differently cut
 * lists; auc is pooled either way.
 */

export const ONLINE_METRICS = ["auc", "ndcg@10", "ctr@10"] as const;
export type OnlineMetric = (typeof ONLINE_METRICS)[number];
const K = 10;
/** Training's label window: a click this long after the view still counts. */
export const ATTRIBUTION_MS = 30 * 60_000;
/** Finished lists kept per variant and model set. */
export const ACCURACY_WINDOW_LISTS = 2000;
/** Figures are exported once this many finished lists with a click and a non-click exist (fewer are noise). */
export const ACCURACY_MIN_LISTS = 100;
/** Lists awaiting their attribution window, over all users; the oldest is dropped past it. */
export const MAX_PENDING_LISTS = 50_000;

/** One answer as served. */
export interface ServedRanking {
  /** Answers reported twice under one id (a retried call) count once. */
  requestId?: string;
  userId: string;
  /** Served order, best first. */
  items: { itemId: string; score: number }[];
  variant: string;
  /** Model versions by name, as in the answer's metadata ("ranker-gbdt" -> "v1"). */
  modelVersions: Record<string, string>;
  atMs: number;
}

interface Pending {
  key: string;
  userId: string;
  variant: string;
  modelVersions: Record<string, string>;
  requestId: string | undefined;
  atMs: number;
  itemIds: string[];
  scores: Float64Array;
  clicked: Uint8Array;
}

interface Finished {
  scores: Float64Array;
  clicked: Uint8Array;
}

interface Series {
  variant: string;
  modelVersions: Record<string, string>;
  lists: Finished[];
  next: number;
}

export interface OnlineFigures {
  variant: string;
  /** "ranker-gbdt@v1+ranker-mlp@v1". */
  models: string;
  /** Finished lists in the window, and how many have both a click and a non-click. */
  lists: number;
  judgedLists: number;
  online: Partial<Record<OnlineMetric, number>>;
  /** online / offline per ranker that served and metric its manifest states. */
  ratios: { model: string; modelVersion: string; metric: OnlineMetric; offline: number; ratio: number }[];
}

export interface OnlineAccuracyOptions {
  serviceVersion: string;
  attributionMs?: number;
  windowLists?: number;
  minLists?: number;
  maxPending?: number;
  /** Share of answers tracked (1: all); drawn with `random`. */
  sampleRate?: number;
  random?: () => number;
  /** Time the attribution windows close by; the replay test drives it. */
  now?: () => number;
}

/** Area under the ROC curve of `scores` for `labels` (1 positive), ties counted half; NaN without both classes. */
export function auc(scores: Float64Array, labels: Uint8Array): number {
  const order = Array.from(scores.keys()).sort((a, b) => scores[a]! - scores[b]!);
  let positives = 0;
  let rankSum = 0;
  for (let start = 0; start < order.length; ) {
    let end = start;
    while (end + 1 < order.length && scores[order[end + 1]!] === scores[order[start]!]) end++;
    const meanRank = (start + end) / 2 + 1;
    for (let k = start; k <= end; k++) {
      if (labels[order[k]!]) {
        positives++;
        rankSum += meanRank;
      }
    }
    start = end + 1;
  }
  const negatives = order.length - positives;
  if (positives === 0 || negatives === 0) return Number.NaN;
  return (rankSum - (positives * (positives + 1)) / 2) / (positives * negatives);
}

/** NDCG@k with binary gains of a list in served order. */
function ndcg(clicked: Uint8Array, positives: number): number {
  let dcg = 0;
  let ideal = 0;
  for (let r = 0; r < Math.min(K, clicked.length); r++) dcg += clicked[r]! / Math.log2(r + 2);
  for (let r = 0; r < Math.min(K, positives); r++) ideal += 1 / Math.log2(r + 2);
  return dcg / ideal;
}

const live = new Set<OnlineAccuracy>();
const offlineFigures = new Map<string, Partial<Record<OnlineMetric, number>>>();
/** Bumped when offline figures change, so cached ratios are recomputed. */
let offlineGeneration = 0;

/** Remembers a ranker's offline figures (its manifest's metrics) for the ratios. */
export function registerOfflineFigures(model: string, modelVersion: string, metrics: unknown): void {
  const figures: Partial<Record<OnlineMetric, number>> = {};
  for (const metric of ONLINE_METRICS) {
    const value = (metrics as Record<string, unknown> | undefined)?.[metric];
    if (typeof value === "number" && value > 0) figures[metric] = value;
  }
  offlineFigures.set(`${model}@${modelVersion}`, figures);
  offlineGeneration++;
}

export const onlineMetric = new Gauge({
  name: "recsys_prediction_online_metric",
  help: "Online ranking accuracy over the last finished served lists (clicks joined within the attribution window), by variant and serving models: auc, ndcg@10, ctr@10.",
  labelNames: ["version", "variant", "models", "metric"] as const,
  registers: [registry],
  collect() {
    this.reset();
    for (const tracker of live) {
      for (const f of tracker.figures()) {
        for (const [metric, value] of Object.entries(f.online)) this.set({ version: tracker.serviceVersion, variant: f.variant, models: f.models, metric }, value);
      }
    }
  },
});

export const onlineLists = new Gauge({
  name: "recsys_prediction_online_lists",
  help: "Finished served lists in the online accuracy window, by variant and serving models.",
  labelNames: ["version", "variant", "models"] as const,
  registers: [registry],
  collect() {
    this.reset();
    for (const tracker of live) {
      for (const f of tracker.figures()) this.set({ version: tracker.serviceVersion, variant: f.variant, models: f.models }, f.lists);
    }
  },
});

export const offlineMetric = new Gauge({
  name: "recsys_prediction_offline_metric",
  help: "A serving ranker's offline figure from its manifest (validation split), next to the online one.",
  labelNames: ["model", "model_version", "metric"] as const,
  registers: [registry],
  collect() {
    this.reset();
    for (const [id, figures] of offlineFigures) {
      const [model, modelVersion] = id.split("@") as [string, string];
      for (const [metric, value] of Object.entries(figures)) this.set({ model, model_version: modelVersion, metric }, value);
    }
  },
});

export const onlineOfflineRatio = new Gauge({
  name: "recsys_prediction_online_offline_ratio",
  help: "Online figure of a variant and its serving models over the offline figure in the manifest of each ranker that served it (the target is at least 0.95).",
  // models as on the online figure: a variant served by the full ensemble and by its simplified
  // rung (one ranker) has two figures, each with its own ratio to the same ranker's offline one.
  labelNames: ["version", "variant", "models", "model", "model_version", "metric"] as const,
  registers: [registry],
  collect() {
    this.reset();
    for (const tracker of live) {
      for (const f of tracker.figures()) {
        for (const r of f.ratios) this.set({ version: tracker.serviceVersion, variant: f.variant, models: f.models, model: r.model, model_version: r.modelVersion, metric: r.metric }, r.ratio);
      }
    }
  },
});

/**
 * Joins served answers with click outcomes and keeps the online figures of each
 * variant and model set; exported as metrics while open.
 */
export class OnlineAccuracy {
  readonly serviceVersion: string;
  private readonly attributionMs: number;
  private readonly windowLists: number;
  private readonly minLists: number;
  private readonly maxPending: number;
  private readonly sampleRate: number;
  private readonly random: () => number;
  private readonly now: () => number;
  /** Lists awaiting their window, in the order served. */
  private readonly pending: Pending[] = [];
  private readonly byUser = new Map<string, Pending[]>();
  private readonly pendingIds = new Set<string>();
  private readonly series = new Map<string, Series>();
  private dropped = 0;
  /** The figures as of the last finished list: every gauge reads them on each scrape. */
  private computed: { figures: OnlineFigures[]; offlineGeneration: number } | undefined;

  constructor(options: OnlineAccuracyOptions) {
    this.serviceVersion = options.serviceVersion;
    this.attributionMs = options.attributionMs ?? ATTRIBUTION_MS;
    this.windowLists = options.windowLists ?? ACCURACY_WINDOW_LISTS;
    this.minLists = options.minLists ?? ACCURACY_MIN_LISTS;
    this.maxPending = options.maxPending ?? MAX_PENDING_LISTS;
    this.sampleRate = options.sampleRate ?? 1;
    this.random = options.random ?? Math.random;
    this.now = options.now ?? Date.now;
    live.add(this);
  }

  /** An answer Predict served. Answers without model scores (popular, static rungs) carry no model versions and are skipped. */
  served(answer: ServedRanking): void {
    this.settle();
    const rankers = Object.keys(answer.modelVersions).filter((name) => name.startsWith("ranker-"));
    if (rankers.length === 0 || answer.items.length === 0) return;
    if (answer.requestId !== undefined && this.pendingIds.has(answer.requestId)) return;
    if (this.sampleRate < 1 && this.random() >= this.sampleRate) return;
    const key = `${answer.variant}|${modelsLabel(answer.modelVersions)}`;
    const list: Pending = {
      key,
      userId: answer.userId,
      variant: answer.variant,
      modelVersions: answer.modelVersions,
      requestId: answer.requestId,
      atMs: answer.atMs,
      itemIds: answer.items.map((i) => i.itemId),
      scores: Float64Array.from(answer.items, (i) => i.score),
      clicked: new Uint8Array(answer.items.length),
    };
    this.pending.push(list);
    if (list.requestId !== undefined) this.pendingIds.add(list.requestId);
    const lists = this.byUser.get(answer.userId);
    if (lists) lists.push(list);
    else this.byUser.set(answer.userId, [list]);
    if (this.pending.length > this.maxPending) {
      this.dropped++;
      this.finish(this.pending.shift()!, false);
    }
  }

  /** A click (or purchase) of `itemId` by `userId` at `atMs`: every list that served it to the user within the window before counts it. */
  outcome(userId: string, itemId: string, atMs: number): void {
    for (const list of this.byUser.get(userId) ?? []) {
      if (atMs < list.atMs || atMs > list.atMs + this.attributionMs) continue;
      list.itemIds.forEach((id, position) => {
        if (id === itemId) list.clicked[position] = 1;
      });
    }
  }

  /** Lists dropped unfinished because too many awaited their window. */
  get droppedLists(): number {
    return this.dropped;
  }

  /** The online figures of every variant and model set, with the ratios to the offline ones. */
  figures(): OnlineFigures[] {
    this.settle();
    if (this.computed?.offlineGeneration !== offlineGeneration) {
      this.computed = { figures: [...this.series.values()].map((s) => this.figuresOf(s)), offlineGeneration };
    }
    return this.computed.figures;
  }

  close(): void {
    live.delete(this);
  }

  /** Moves every list whose attribution window has closed into its series. */
  private settle(): void {
    const closed = this.now() - this.attributionMs;
    while (this.pending.length > 0 && this.pending[0]!.atMs < closed) this.finish(this.pending.shift()!, true);
  }

  private finish(list: Pending, keep: boolean): void {
    if (list.requestId !== undefined) this.pendingIds.delete(list.requestId);
    const lists = this.byUser.get(list.userId) ?? [];
    lists.splice(lists.indexOf(list), 1);
    if (lists.length === 0) this.byUser.delete(list.userId);
    if (!keep) return;
    this.computed = undefined;
    let series = this.series.get(list.key);
    if (!series) {
      series = { variant: list.variant, modelVersions: list.modelVersions, lists: [], next: 0 };
      this.series.set(list.key, series);
    }
    const finished = { scores: list.scores, clicked: list.clicked };
    if (series.lists.length < this.windowLists) series.lists.push(finished);
    else series.lists[series.next] = finished;
    series.next = (series.next + 1) % this.windowLists;
  }

  private figuresOf(series: Series): OnlineFigures {
    const judged = series.lists.filter((l) => {
      const clicks = l.clicked.reduce((a, b) => a + b, 0);
      return clicks > 0 && clicks < l.clicked.length;
    });
    const online: Partial<Record<OnlineMetric, number>> = {};
    if (judged.length >= this.minLists) {
      const total = series.lists.reduce((n, l) => n + l.scores.length, 0);
      const scores = new Float64Array(total);
      const labels = new Uint8Array(total);
      let offset = 0;
      for (const l of series.lists) {
        scores.set(l.scores, offset);
        labels.set(l.clicked, offset);
        offset += l.scores.length;
      }
      const pooled = auc(scores, labels);
      if (Number.isFinite(pooled)) online.auc = pooled;
      const mean = (f: (l: Finished) => number) => judged.reduce((sum, l) => sum + f(l), 0) / judged.length;
      online["ndcg@10"] = mean((l) => ndcg(l.clicked, l.clicked.reduce((a, b) => a + b, 0)));
      online["ctr@10"] = mean((l) => l.clicked.subarray(0, K).reduce((a, b) => a + b, 0) / Math.min(K, l.clicked.length));
    }
    const ratios: OnlineFigures["ratios"] = [];
    for (const [model, modelVersion] of Object.entries(series.modelVersions)) {
      const offline = offlineFigures.get(`${model}@${modelVersion}`) ?? {};
      for (const metric of ONLINE_METRICS) {
        const value = online[metric];
        const reference = offline[metric];
        if (value !== undefined && reference !== undefined) ratios.push({ model, modelVersion, metric, offline: reference, ratio: value / reference });
      }
    }
    return { variant: series.variant, models: modelsLabel(series.modelVersions), lists: series.lists.length, judgedLists: judged.length, online, ratios };
  }
}

function modelsLabel(modelVersions: Record<string, string>): string {
  return Object.entries(modelVersions)
    .map(([name, version]) => `${name}@${version}`)
    .sort()
    .join("+");
}
