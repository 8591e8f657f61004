import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { ConnectError, type Client } from "@connectrpc/connect";
import { Priority, type RequestContext } from "../../gen/recsys/common/v1/common_pb.js";
import { CacheLevel, FallbackLevel, PredictRequestSchema, type PredictRequest, type PredictResponseSchema } from "../../gen/recsys/prediction/v1/prediction_pb.js";
import { CandidateSource, PopularKind, type RetrievalService } from "../../gen/recsys/retrieval/v1/retrieval_pb.js";
import { Code, Deadline, activeTraceId, invalidArgument, statusError, type Logger } from "../kit/index.js";
import type { Admission } from "./admission.js";
import type { ExposureRecorder } from "./exposures.js";
import type { OnlineAccuracy } from "./online-accuracy.js";
import type { VariantResolver } from "./variant-resolver.js";
import type { CacheKey, CachedItem, CachedPrediction, PredictionCache } from "./cache.js";
import type { PredictionConfig } from "./config.js";
import { checkTimeZone, contextBucket } from "./context.js";
import { preferredCategories, topCategories, type FeatureBag, type FeatureReader, type UserFeatures } from "./features.js";
import { coalesced, computations, fallbacks, predictions, shed, stageSeconds } from "./metrics.js";
import type { ModelSet, ModelStore } from "./model-store.js";
import { pickPopular, type PopularCopy } from "./popular.js";
import { cheapestRanker, diversify, ensembleScores, simplifiedScores, toRankedItems, type RankCandidate } from "./ranking.js";
import { EMBEDDING, parseExplicitVariant, type ExplicitVariant, type Variant } from "./variants.js";

export type PredictAnswer = MessageInitShape<typeof PredictResponseSchema>;

/** A validated request. */
export interface Plan {
  userId: string;
  context: RequestContext | undefined;
  /** Explicit candidates, deduplicated; empty means retrieval chooses. */
  candidates: string[];
  num: number;
  priority: Priority;
  bypassCache: boolean;
  explicit: ExplicitVariant | undefined;
  /** The field an unknown explicit variant is reported on. */
  variantField: string;
  bucket: string;
}

/** What a computation or a cache produced, before it is cut to each caller's size. */
interface Outcome {
  items: CachedItem[];
  rung: FallbackLevel;
  reason: string;
  cacheLevel: CacheLevel;
  stale: boolean;
  modelVersions: Record<string, string>;
  experimentId: string;
  variant: string;
  featureAgeSeconds: number;
}

/**
 * Stage budgets as shares of the whole deadline: each stage gets at most `cap` of
 * it and must leave `reserve` of it for the stages after it (and the cheaper rungs).
 */
const SHARES = {
  assign: { cap: 0.05, reserve: 0.9 },
  fetch: { cap: 0.45, reserve: 0.3 },
  itemFeatures: { cap: 0.3, reserve: 0.15 },
  rank: { cap: 0.3, reserve: 0.02 },
  simplified: { cap: 0.15, reserve: 0.02 },
  popular: { cap: 0.15, reserve: 0.01 },
};

/** The caller's deadline, split into stage budgets. */
class Budget {
  private readonly deadline: Deadline;
  constructor(private readonly totalMs: number) {
    this.deadline = new Deadline(totalMs, 0);
  }

  remainingMs(): number {
    return this.deadline.remainingMs();
  }

  /** Whole milliseconds: Connect writes timeoutMs into grpc-timeout as is, and "12.5m" is not a valid value. */
  for(stage: keyof typeof SHARES): number {
    const { cap, reserve } = SHARES[stage];
    return Math.floor(this.deadline.budgetMs(this.totalMs * cap, this.totalMs * reserve));
  }
}

/** Kept back from the caller's deadline so the answer arrives before it. */
const RESPONSE_RESERVE_MS = 5;

const SOURCE_NAMES: Record<CandidateSource, string> = {
  [CandidateSource.UNSPECIFIED]: "unknown",
  [CandidateSource.ANN]: "ann",
  [CandidateSource.EXACT]: "ann",
  [CandidateSource.POPULAR]: "popular",
  [CandidateSource.TRENDING]: "trending",
  [CandidateSource.ITEM_TO_ITEM]: "item_to_item",
};

const SOURCES = Object.keys(SOURCE_NAMES).map(Number) as CandidateSource[];

/** The names of the sources set in a CandidateColumns source mask. */
function sourceNames(mask: number): string[] {
  const names: string[] = [];
  for (const source of SOURCES) if (mask & (1 << source) && !names.includes(SOURCE_NAMES[source])) names.push(SOURCE_NAMES[source]);
  return names;
}

const RUNG_NAMES: Record<FallbackLevel, string> = {
  [FallbackLevel.UNSPECIFIED]: "unspecified",
  [FallbackLevel.PRIMARY]: "primary",
  [FallbackLevel.CACHED]: "cached",
  [FallbackLevel.SIMPLIFIED]: "simplified",
  [FallbackLevel.POPULAR]: "popular",
  [FallbackLevel.STATIC]: "static",
};

/** A short, label-safe reason for metrics ("unavailable", "deadline_exceeded", "error"). */
function reasonLabel(err: unknown): string {
  if (err instanceof ConnectError) return Code[err.code].replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase();
  return err instanceof StageTimeout ? "deadline_exceeded" : "error";
}

function describe(what: string, err: unknown): string {
  const message = err instanceof ConnectError ? `${Code[err.code]}: ${err.rawMessage}` : String((err as Error)?.message ?? err);
  return `${what}: ${message}`;
}

class StageTimeout extends Error {}

/** Rejects when `ms` passes first; the work itself cannot be cancelled but nobody waits for it. */
async function within<T>(work: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new StageTimeout(`${what} did not finish within ${Math.round(ms)} ms`)), ms);
  });
  try {
    return await Promise.race([work, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Stage latencies of one computation, also observed in the stage histogram. */
class Stages {
  readonly list: { stage: string; ms: number }[] = [];
  constructor(private readonly version: string) {}

  async time<T>(stage: string, work: () => Promise<T>): Promise<T> {
    const started = performance.now();
    try {
      return await work();
    } finally {
      this.record(stage, performance.now() - started);
    }
  }

  record(stage: string, ms: number): void {
    this.list.push({ stage, ms });
    stageSeconds.observe({ version: this.version, stage }, ms / 1000);
  }
}

/** What the primary attempt got before it failed, for the rungs below it. */
interface Gathered {
  user?: UserFeatures;
  candidates?: RankCandidate[];
  itemFeatures?: Map<string, FeatureBag>;
}

export interface PredictorDeps {
  config: PredictionConfig;
  store: ModelStore;
  cache: PredictionCache;
  features: FeatureReader;
  retrieval: Client<typeof RetrievalService> | undefined;
  /** The popular lists, held locally so the popular rung answers while retrieval is down. */
  popular: PopularCopy;
  variants: VariantResolver;
  admission: Admission;
  /** Told every answer served, for the join with clicks. */
  accuracy: OnlineAccuracy;
  /** Told the experiment variant of every answer served; none without an experiment service. */
  exposures?: ExposureRecorder;
  log: Logger;
}

/**
 * Predict, end to end: assignment -> L1/L2 prediction cache (stale served while it
 * is recomputed) -> one shared computation per distinct request (coalescing),
 * admitted by priority -> the fallback ladder: primary (features and candidates in
 * parallel, item features, the ONNX ensemble, diversity) -> cached -> simplified ->
 * popular -> static. Only bad input and shedding of LOW priority are errors.
 */
export class Predictor {
  private readonly inflight = new Map<string, Promise<Outcome>>();
  private readonly version: string;

  constructor(private readonly deps: PredictorDeps) {
    this.version = deps.config.SERVICE_VERSION;
  }

  /** Semantic checks past protovalidate; `field` prefixes field names (PredictBatch: "requests[2]."). */
  plan(request: PredictRequest, field = ""): Plan {
    if (request.userId.trim() === "") throw invalidArgument(`${field}user_id`, "must not be blank");
    checkTimeZone(request.context?.timeZone ?? "", `${field}context.time_zone`);
    return {
      userId: request.userId,
      context: request.context,
      candidates: [...new Set(request.candidateItemIds)],
      num: request.numPredictions ?? 10,
      priority: request.priority,
      bypassCache: request.bypassCache,
      explicit: parseExplicitVariant(request.modelVariant, `${field}model_variant`),
      variantField: `${field}model_variant`,
      bucket: contextBucket(request.context),
    };
  }

  /**
   * One answer. `shedAsError`: a LOW request shed by admission fails with
   * RESOURCE_EXHAUSTED (Predict) instead of taking a cheap rung (PredictBatch).
   */
  async predict(plan: Plan, timeoutMs: number | undefined, shedAsError: boolean): Promise<PredictAnswer> {
    const started = performance.now();
    const budget = new Budget(Math.max(0, (timeoutMs ?? this.deps.config.DEFAULT_DEADLINE_MS) - RESPONSE_RESERVE_MS));
    const stages = new Stages(this.version);
    const resolved = await stages.time("assign", () => this.deps.variants.resolve(plan, budget.for("assign")));
    const variant = resolved.variant;
    const set = this.deps.store.forVersion(variant.modelVersion);
    const release = set.use();
    try {
      const key: CacheKey = { userId: plan.userId, bucket: plan.bucket, variant: variant.key, models: set.key };
      const cacheable = !plan.bypassCache && plan.candidates.length === 0;
      let outcome: Outcome | undefined;
      if (cacheable) {
        const hit = await stages.time("cache", () => this.deps.cache.get(key));
        if (hit && (hit.entry.complete || hit.entry.items.length >= plan.num)) {
          if (hit.stale) this.refreshInBackground(plan, variant, set, key);
          outcome = fromCache(hit.entry, FallbackLevel.PRIMARY, hit.level === "l1" ? CacheLevel.L1 : CacheLevel.L2, hit.stale, "");
        }
      }
      outcome ??= await this.computeFor(plan, variant, set, key, budget, stages, shedAsError);
      const reason = [resolved.degraded, outcome.reason].filter(Boolean).join("; ");
      predictions.inc({ version: this.version, rung: RUNG_NAMES[outcome.rung], cache: CacheLevel[outcome.cacheLevel].toLowerCase() });
      const served = outcome.items.slice(0, plan.num);
      this.deps.accuracy.served({
        requestId: activeTraceId() || undefined,
        userId: plan.userId,
        items: served,
        variant: outcome.variant,
        modelVersions: outcome.modelVersions,
        atMs: Date.now(),
      });
      // A queue append, never a wait: the answer does not depend on the experiment service.
      if (outcome.experimentId) this.deps.exposures?.record({ experimentId: outcome.experimentId, variant: outcome.variant, userId: plan.userId });
      return {
        predictions: served.map((item, i) => ({ ...item, rank: i + 1 })),
        metadata: {
          modelVersions: outcome.modelVersions,
          experimentId: outcome.experimentId,
          variant: outcome.variant,
          cacheLevel: outcome.cacheLevel,
          fallbackLevel: outcome.rung,
          fallbackReason: reason,
          stages: stages.list,
          latencyMs: performance.now() - started,
          featureAgeSeconds: outcome.featureAgeSeconds,
          traceId: activeTraceId(),
          stale: outcome.stale,
        },
      };
    } finally {
      release();
    }
  }

  /**
   * Computes and caches a user's prediction in a context, ignoring what is cached
   * (the precompute job). Resolves with the rung that answered; only primary
   * answers are written.
   */
  async recompute(userId: string, context: RequestContext | undefined): Promise<FallbackLevel> {
    const plan = this.plan(create(PredictRequestSchema, { userId, context, priority: Priority.LOW }));
    const budget = new Budget(this.deps.config.DEFAULT_DEADLINE_MS);
    const { variant } = await this.deps.variants.resolve(plan, budget.for("assign"));
    const set = this.deps.store.forVersion(variant.modelVersion);
    const release = set.use();
    try {
      const key: CacheKey = { userId, bucket: plan.bucket, variant: variant.key, models: set.key };
      const outcome = await this.ladder(plan, variant, set, key, this.depth(plan), budget, new Stages(this.version), "precompute");
      return outcome.rung;
    } finally {
      release();
    }
  }

  private depth(plan: Plan): number {
    const cacheable = !plan.bypassCache && plan.candidates.length === 0;
    return cacheable ? Math.max(plan.num, this.deps.config.CACHE_DEPTH) : plan.num;
  }

  private flightKey(plan: Plan, key: CacheKey): string {
    return JSON.stringify([key.userId, key.bucket, key.variant, key.models, this.depth(plan), plan.candidates, plan.bypassCache]);
  }

  /** Joins an identical computation in flight, or starts one if admission lets it. */
  private async computeFor(plan: Plan, variant: Variant, set: ModelSet, key: CacheKey, budget: Budget, stages: Stages, shedAsError: boolean): Promise<Outcome> {
    const flightKey = this.flightKey(plan, key);
    let shared = this.inflight.get(flightKey);
    if (!shared) {
      const ticket = await this.deps.admission.acquire(plan.priority);
      if (!ticket.admitted) {
        const priority = Priority[plan.priority === Priority.UNSPECIFIED ? Priority.NORMAL : plan.priority].toLowerCase();
        if (shedAsError && plan.priority === Priority.LOW) {
          shed.inc({ version: this.version, priority, action: "rejected" });
          throw statusError(Code.ResourceExhausted, "OVERLOADED", "overloaded: low-priority predictions are shed; retry later");
        }
        shed.inc({ version: this.version, priority, action: "degraded" });
        return this.cheapAnswer(plan, key, set, variant, "overloaded: shed by admission");
      }
      stages.record("queue", ticket.waitedMs);
      shared = this.inflight.get(flightKey);
      if (shared) {
        ticket.release();
      } else {
        const computation = this.ladder(plan, variant, set, key, this.depth(plan), budget, stages, "request").finally(() => {
          this.inflight.delete(flightKey);
          ticket.release();
        });
        this.inflight.set(flightKey, computation);
        return computation;
      }
    }
    coalesced.inc({ version: this.version });
    // A joiner keeps its own deadline: if the shared work outlasts it, a cheap rung answers.
    return within(shared, budget.remainingMs(), "shared computation").catch(() => this.cheapAnswer(plan, key, set, variant, "deadline: joined computation too slow"));
  }

  /** Stale-while-revalidate: recomputes a stale entry off the request path, as LOW priority work. */
  private refreshInBackground(plan: Plan, variant: Variant, set: ModelSet, key: CacheKey): void {
    const flightKey = this.flightKey(plan, key);
    if (this.inflight.has(flightKey)) return;
    const release = set.use();
    const refresh = async () => {
      const ticket = await this.deps.admission.acquire(Priority.LOW);
      if (!ticket.admitted) return;
      if (this.inflight.has(flightKey)) return ticket.release();
      const budget = new Budget(this.deps.config.DEFAULT_DEADLINE_MS);
      const computation = this.ladder(plan, variant, set, key, this.depth(plan), budget, new Stages(this.version), "refresh").finally(() => {
        this.inflight.delete(flightKey);
        ticket.release();
      });
      this.inflight.set(flightKey, computation);
      await computation;
    };
    refresh()
      .catch((err: unknown) => this.deps.log.debug({ err: String(err) }, "background refresh failed"))
      .finally(release);
  }

  /** Cached (any context or variant of the user), else the local popular lists, else static defaults: no upstream call, no model run. */
  private async cheapAnswer(plan: Plan, key: CacheKey, set: ModelSet, variant: Variant, reason: string): Promise<Outcome> {
    if (!plan.bypassCache && plan.candidates.length === 0) {
      const hit = await this.deps.cache.anyForUser(key);
      if (hit) return this.fellBack(fromCache(hit.entry, FallbackLevel.CACHED, hit.level === "l1" ? CacheLevel.L1 : CacheLevel.L2, true, reason), "overloaded");
    }
    const user = this.deps.features.cachedUser(plan.userId, plan.context);
    const popular = this.localPopular(user, set, variant, this.depth(plan));
    return this.fellBack(popular ? { ...popular, reason } : staticAnswer(set, variant, this.depth(plan), reason), "overloaded");
  }

  private fellBack(outcome: Outcome, reason: string): Outcome {
    fallbacks.inc({ version: this.version, rung: RUNG_NAMES[outcome.rung], reason });
    return outcome;
  }

  /** The fallback ladder; never throws. */
  private async ladder(plan: Plan, variant: Variant, set: ModelSet, key: CacheKey, depth: number, budget: Budget, stages: Stages, why: string): Promise<Outcome> {
    computations.inc({ version: this.version, reason: why });
    const gathered: Gathered = {};
    const reasons: string[] = [];
    let label = "deadline_exceeded";
    if (budget.remainingMs() >= this.deps.config.PRIMARY_MIN_BUDGET_MS) {
      try {
        const outcome = await this.primary(plan, variant, set, depth, budget, stages, gathered);
        if (!plan.bypassCache && plan.candidates.length === 0) void this.deps.cache.set(key, toEntry(outcome, depth));
        return outcome;
      } catch (err) {
        reasons.push(String((err as Error).message));
        label = reasonLabel((err as { cause?: unknown }).cause ?? err);
      }
    } else {
      reasons.push(`deadline: ${Math.round(budget.remainingMs())} ms left, too little for the full pipeline`);
    }
    const reason = reasons.join("; ");

    if (!plan.bypassCache && plan.candidates.length === 0) {
      const hit = await stages.time("fallback_cache", () => this.deps.cache.anyForUser(key));
      if (hit) {
        const stale = hit.stale || hit.bucket !== plan.bucket;
        return this.fellBack(fromCache(hit.entry, FallbackLevel.CACHED, hit.level === "l1" ? CacheLevel.L1 : CacheLevel.L2, stale, reason), label);
      }
    }

    const user = gathered.user ?? this.deps.features.cachedUser(plan.userId, plan.context);
    if (gathered.candidates && gathered.candidates.length > 0) {
      const budgetMs = budget.for("simplified");
      try {
        if (budgetMs <= 0) throw new StageTimeout("no budget left");
        const candidates = gathered.candidates;
        const items = gathered.itemFeatures ?? this.deps.features.cachedItemFeatures(candidates.map((c) => c.itemId));
        const scores = await stages.time("simplified", () => within(simplifiedScores(set, plan.userId, user, candidates, items), budgetMs, "simplified ranking"));
        const ranker = cheapestRanker(set);
        return this.fellBack(
          {
            ...base(variant, CacheLevel.MISS),
            items: toRankedItems(candidates, scores, depth, variant.maxPerCategory, topCategories(user, 3)),
            rung: FallbackLevel.SIMPLIFIED,
            reason: `${reason}; ranked by ${ranker} alone over ${user.source} features`,
            modelVersions: { [ranker]: set.versions[ranker]! },
            featureAgeSeconds: user.ageSeconds,
          },
          label,
        );
      } catch (err) {
        reasons.push(describe("simplified", err));
      }
    }

    const popular = await this.popular(plan, user, set, variant, depth, budget, stages).catch((err: unknown) => {
      reasons.push(describe("popular", err));
      return undefined;
    });
    if (popular) return this.fellBack({ ...popular, reason: reasons.join("; ") }, label);
    return this.fellBack(staticAnswer(set, variant, depth, reasons.join("; ")), label);
  }

  private async primary(plan: Plan, variant: Variant, set: ModelSet, depth: number, budget: Budget, stages: Stages, gathered: Gathered): Promise<Outcome> {
    const fetchBudget = budget.for("fetch");
    const [user, candidates] = await Promise.allSettled([
      stages.time("features", () => this.deps.features.user(plan.userId, plan.context, fetchBudget)).then((u) => (gathered.user = u)),
      stages.time("candidates", () => this.candidates(plan, set, depth, fetchBudget)).then((c) => (gathered.candidates = c)),
    ]);
    if (candidates.status === "rejected") throw stageError("candidates", candidates.reason);
    if (user.status === "rejected") throw stageError("features", user.reason);
    if (candidates.value.length === 0) throw new Error("candidates: retrieval returned none");
    const ids = candidates.value.map((c) => c.itemId);
    const itemBudget = budget.for("itemFeatures");
    const itemFeatures = await stages
      .time("item_features", () => this.deps.features.itemFeatures(ids, itemBudget))
      .catch((err: unknown) => Promise.reject(stageError("item features", err)));
    gathered.itemFeatures = itemFeatures;
    for (const candidate of candidates.value) {
      if (candidate.category === "") candidate.category = String(itemFeatures.get(candidate.itemId)?.["item_profile:category"] ?? "");
    }
    const rankBudget = budget.for("rank");
    const scores = await stages
      .time("rank", () => within(ensembleScores(set, variant.weights, plan.userId, user.value, candidates.value, itemFeatures), rankBudget, "ranking"))
      .catch((err: unknown) => Promise.reject(stageError("ranking", err)));
    const members = Object.keys(variant.weights).filter((name) => (variant.weights[name] ?? 0) > 0);
    const modelVersions = Object.fromEntries(
      members.map((name) => (name === EMBEDDING ? ["embeddings", set.versions.embeddings!] : [name, set.versions[name]])).filter(([, v]) => v),
    );
    return {
      ...base(variant, CacheLevel.MISS),
      items: toRankedItems(candidates.value, scores, depth, variant.maxPerCategory, topCategories(user.value, 3)),
      modelVersions,
      featureAgeSeconds: user.value.ageSeconds,
    };
  }

  /** Explicit candidates (categories from the catalogue), or retrieval's merged candidates. */
  private async candidates(plan: Plan, set: ModelSet, depth: number, timeoutMs: number): Promise<RankCandidate[]> {
    if (plan.candidates.length > 0) {
      return plan.candidates.map((itemId) => ({ itemId, category: set.catalog.byId.get(itemId)?.category ?? "", sources: ["requested"] }));
    }
    if (!this.deps.retrieval) throw new Error("no retrieval service configured (RETRIEVAL_ADDR)");
    const k = Math.min(1000, Math.max(this.deps.config.CANDIDATES_K, depth));
    const response = await this.deps.retrieval.getCandidates({ userId: plan.userId, k, context: plan.context, columnar: true }, { timeoutMs });
    const columns = response.columns;
    if (!columns) return response.candidates.map((c) => ({ itemId: c.itemId, category: c.category, sources: c.sources.map((s) => SOURCE_NAMES[s.source]) }));
    return columns.itemIds.map((itemId, i) => ({
      itemId,
      category: columns.categoryNames[columns.categoryIndex[i] ?? -1] ?? "",
      sources: sourceNames(columns.sourceMasks[i] ?? 0),
    }));
  }

  /**
   * Popular items of the user's preferred categories, then overall: from the local
   * copy of the lists (no upstream call), else from retrieval when the copy holds
   * none; static items fill a short list.
   */
  private async popular(plan: Plan, user: UserFeatures, set: ModelSet, variant: Variant, depth: number, budget: Budget, stages: Stages): Promise<Outcome> {
    const local = await stages.time("popular", async () => this.localPopular(user, set, variant, depth));
    if (local) return local;
    if (!this.deps.retrieval) throw new Error("no popular lists held and no retrieval service configured (RETRIEVAL_ADDR)");
    const budgetMs = budget.for("popular");
    if (budgetMs <= 0) throw new StageTimeout("no budget left");
    const category = topCategories(user, 1)[0] ?? "";
    const response = await stages.time("popular_retrieval", () =>
      this.deps.retrieval!.getPopular({ category, k: Math.min(1000, depth), kind: PopularKind.POPULAR }, { timeoutMs: budgetMs }),
    );
    const items: CachedItem[] = response.candidates.map((c) => ({
      itemId: c.itemId,
      category: c.category,
      score: c.score,
      explanation: category ? `popular in ${category}, your favourite category` : `popular in ${c.category}`,
    }));
    return popularOutcome(items, user, set, variant, depth);
  }

  /** The popular rung from the local copy of the lists; undefined when it holds nothing for this user. */
  private localPopular(user: UserFeatures, set: ModelSet, variant: Variant, depth: number): Outcome | undefined {
    const picks = pickPopular(this.deps.popular, preferredCategories(user, 3), depth, (itemId) => set.catalog.byId.get(itemId)?.category);
    if (picks.length === 0) return undefined;
    const items: CachedItem[] = picks.map((pick) => ({
      itemId: pick.itemId,
      category: pick.category,
      score: pick.score,
      explanation: pick.preferred ? `popular in ${pick.category}, one of your favourite categories` : `popular in ${pick.category}`,
    }));
    return popularOutcome(items, user, set, variant, depth);
  }
}

/** A popular answer, topped up with static defaults when the list is short. */
function popularOutcome(items: CachedItem[], user: UserFeatures, set: ModelSet, variant: Variant, depth: number): Outcome {
  const seen = new Set(items.map((i) => i.itemId));
  for (const item of staticAnswer(set, variant, depth, "").items) {
    if (items.length >= depth) break;
    if (!seen.has(item.itemId)) items.push(item);
  }
  return { ...base(variant, CacheLevel.MISS), items, rung: FallbackLevel.POPULAR, modelVersions: {}, featureAgeSeconds: user.ageSeconds };
}

function stageError(stage: string, err: unknown): Error {
  return new Error(describe(stage, err), { cause: err });
}

function base(variant: Variant, cacheLevel: CacheLevel) {
  return {
    rung: FallbackLevel.PRIMARY,
    reason: "",
    cacheLevel,
    stale: false,
    experimentId: variant.experimentId,
    variant: variant.name,
  };
}

function fromCache(entry: CachedPrediction, rung: FallbackLevel, cacheLevel: CacheLevel, stale: boolean, reason: string): Outcome {
  return {
    items: entry.items,
    rung,
    reason,
    cacheLevel,
    stale,
    modelVersions: entry.modelVersions,
    experimentId: entry.experimentId,
    variant: entry.variant,
    featureAgeSeconds: entry.featureAgeSeconds,
  };
}

function toEntry(outcome: Outcome, depth: number): CachedPrediction {
  return {
    items: outcome.items,
    computedAt: Date.now(),
    modelVersions: outcome.modelVersions,
    experimentId: outcome.experimentId,
    variant: outcome.variant,
    complete: outcome.items.length < depth,
    featureAgeSeconds: outcome.featureAgeSeconds,
  };
}

/** The catalogue's most popular items, diversified: needs nothing but the files loaded at start. */
function staticAnswer(set: ModelSet, variant: Variant, depth: number, reason: string): Outcome {
  const scored = set.catalog.popular.map((item) => ({ ...item, score: item.popularity }));
  const items = diversify(scored, depth, variant.maxPerCategory).map((item) => ({
    itemId: item.itemId,
    category: item.category,
    score: item.score,
    explanation: `popular in ${item.category}`,
  }));
  return { ...base(variant, CacheLevel.MISS), items, rung: FallbackLevel.STATIC, reason, modelVersions: { catalog: set.catalog.version }, featureAgeSeconds: 0 };
}
