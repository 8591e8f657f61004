import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { ConnectError } from "@connectrpc/connect";
import { Priority, type RequestContext } from "../../gen/recsys/common/v1/common_pb.js";
import { CacheLevel, FallbackLevel, PredictRequestSchema, type PredictRequest, type PredictResponseSchema } from "../../gen/recsys/prediction/v1/prediction_pb.js";
import { Code, Deadline, Reason, activeTraceId, invalidArgument, statusError, type Logger } from "../kit/index.js";
import type { Admission } from "./admission.js";
import type { ExposureRecorder } from "./exposures.js";
import type { OnlineAccuracy } from "./online-accuracy.js";
import type { MirrorRole, ShadowPairing } from "./shadow.js";
import type { VariantResolver } from "./variant-resolver.js";
import type { CacheHit, CacheKey, CacheLevelName, CachedItem, CachedPrediction, PredictionCache } from "./cache.js";
import type { CandidateReader } from "./candidates.js";
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
  /** The prediction cache serves and stores this request: no bypass asked, no explicit candidates. */
  usesCache: boolean;
  /** Items to compute: a cached answer is computed CACHE_DEPTH deep, so longer requests after it find it whole. */
  depth: number;
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

const CACHE_LEVELS: Record<CacheLevelName, CacheLevel> = { l1: CacheLevel.L1, l2: CacheLevel.L2 };

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

/**
 * One computation of a request, made once per Predict (and per background refresh or
 * precompute): the validated request, the variant and models it is served with, its
 * cache key, and its deadline with the stage timings.
 */
class PredictCall {
  readonly key: CacheKey;

  /** `set` is held (`use()`) by whoever makes the call until it is answered. */
  constructor(
    readonly plan: Plan,
    readonly variant: Variant,
    readonly set: ModelSet,
    readonly budget: Budget,
    readonly stages: Stages,
  ) {
    this.key = { userId: plan.userId, bucket: plan.bucket, variant: variant.key, models: set.key };
  }

  /** Identical requests in flight share one computation: this is what makes them identical. */
  flightKey(): string {
    const { key, plan } = this;
    return JSON.stringify([key.userId, key.bucket, key.variant, key.models, plan.depth, plan.candidates, plan.bypassCache]);
  }
}

/** What a LOW request shed by admission gets: RESOURCE_EXHAUSTED (Predict), or a cheap rung like any other (PredictBatch). */
export type WhenShed = "reject" | "degrade";

export interface PredictorDeps {
  config: PredictionConfig;
  store: ModelStore;
  cache: PredictionCache;
  features: FeatureReader;
  /** The retrieval service: candidates, and popular lists when no local copy holds them. */
  retrieval: CandidateReader;
  /** The popular lists, held locally so the popular rung answers while retrieval is down. */
  popular: PopularCopy;
  variants: VariantResolver;
  admission: Admission;
  /** Told every answer served, for the join with clicks. */
  accuracy: OnlineAccuracy;
  /** Told the experiment variant of every answer served; none without an experiment service. */
  exposures?: ExposureRecorder;
  /** Told the answers to mirrored calls (shadow traffic), to pair them; none without Redis settings. */
  shadow?: ShadowPairing;
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
    const candidates = [...new Set(request.candidateItemIds)];
    const num = request.numPredictions ?? 10;
    const usesCache = !request.bypassCache && candidates.length === 0;
    return {
      userId: request.userId,
      context: request.context,
      candidates,
      num,
      priority: request.priority,
      bypassCache: request.bypassCache,
      explicit: parseExplicitVariant(request.modelVariant, `${field}model_variant`),
      variantField: `${field}model_variant`,
      bucket: contextBucket(request.context),
      usesCache,
      depth: usesCache ? Math.max(num, this.deps.config.CACHE_DEPTH) : num,
    };
  }

  /** One answer. */
  async predict(plan: Plan, timeoutMs: number | undefined, whenShed: WhenShed, mirror?: { role: MirrorRole; requestId: string }): Promise<PredictAnswer> {
    const started = performance.now();
    const budget = new Budget(Math.max(0, (timeoutMs ?? this.deps.config.DEFAULT_DEADLINE_MS) - RESPONSE_RESERVE_MS));
    const stages = new Stages(this.version);
    const resolved = await stages.time("assign", () => this.deps.variants.resolve(plan, budget.for("assign")));
    const variant = resolved.variant;
    const set = this.deps.store.forVersion(variant.modelVersion);
    const release = set.use();
    try {
      const call = new PredictCall(plan, variant, set, budget, stages);
      let outcome: Outcome | undefined;
      if (plan.usesCache) {
        const hit = await stages.time("cache", () => this.deps.cache.get(call.key));
        if (hit && (hit.entry.complete || hit.entry.items.length >= plan.num)) {
          if (hit.stale) this.refreshInBackground(call);
          outcome = fromCache(hit, FallbackLevel.PRIMARY, hit.stale, "");
        }
      }
      outcome ??= await this.computeFor(call, whenShed);
      const reason = [resolved.degraded, outcome.reason].filter(Boolean).join("; ");
      predictions.inc({ version: this.version, rung: RUNG_NAMES[outcome.rung], cache: CacheLevel[outcome.cacheLevel].toLowerCase() });
      const served = outcome.items.slice(0, plan.num);
      if (mirror?.requestId) this.deps.shadow?.offer(mirror.role, mirror.requestId, outcome.rung, served);
      // A shadow's answer reaches nobody: no exposure, nothing to click.
      if (mirror?.role !== "shadow") {
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
      }
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
      const outcome = await this.ladder(new PredictCall(plan, variant, set, budget, new Stages(this.version)), "precompute");
      return outcome.rung;
    } finally {
      release();
    }
  }

  /** Joins an identical computation in flight, or starts one if admission lets it. */
  private async computeFor(call: PredictCall, whenShed: WhenShed): Promise<Outcome> {
    const { plan } = call;
    const flightKey = call.flightKey();
    let shared = this.inflight.get(flightKey);
    if (!shared) {
      const ticket = await this.deps.admission.acquire(plan.priority);
      if (!ticket.admitted) {
        const priority = Priority[plan.priority === Priority.UNSPECIFIED ? Priority.NORMAL : plan.priority].toLowerCase();
        if (whenShed === "reject" && plan.priority === Priority.LOW) {
          shed.inc({ version: this.version, priority, action: "rejected" });
          throw statusError(Code.ResourceExhausted, Reason.Overloaded, "overloaded: low-priority predictions are shed; retry later");
        }
        shed.inc({ version: this.version, priority, action: "degraded" });
        return this.cheapAnswer(call, "overloaded: shed by admission");
      }
      call.stages.record("queue", ticket.waitedMs);
      shared = this.inflight.get(flightKey);
      if (shared) {
        ticket.release();
      } else {
        const computation = this.ladder(call, "request").finally(() => {
          this.inflight.delete(flightKey);
          ticket.release();
        });
        this.inflight.set(flightKey, computation);
        return computation;
      }
    }
    coalesced.inc({ version: this.version });
    // A joiner keeps its own deadline: if the shared work outlasts it, a cheap rung answers.
    return within(shared, call.budget.remainingMs(), "shared computation").catch(() => this.cheapAnswer(call, "deadline: joined computation too slow"));
  }

  /** Stale-while-revalidate: recomputes a stale entry off the request path, as LOW priority work with a deadline of its own. */
  private refreshInBackground(call: PredictCall): void {
    const flightKey = call.flightKey();
    if (this.inflight.has(flightKey)) return;
    const release = call.set.use();
    const refresh = async () => {
      const ticket = await this.deps.admission.acquire(Priority.LOW);
      if (!ticket.admitted) return;
      if (this.inflight.has(flightKey)) return ticket.release();
      const again = new PredictCall(call.plan, call.variant, call.set, new Budget(this.deps.config.DEFAULT_DEADLINE_MS), new Stages(this.version));
      const computation = this.ladder(again, "refresh").finally(() => {
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
  private async cheapAnswer(call: PredictCall, reason: string): Promise<Outcome> {
    if (call.plan.usesCache) {
      const hit = await this.deps.cache.anyForUser(call.key);
      if (hit) return this.fellBack(fromCache(hit, FallbackLevel.CACHED, true, reason), "overloaded");
    }
    const popular = this.localPopular(call, this.deps.features.cachedUser(call.plan));
    return this.fellBack(popular ? { ...popular, reason } : staticAnswer(call, reason), "overloaded");
  }

  private fellBack(outcome: Outcome, reason: string): Outcome {
    fallbacks.inc({ version: this.version, rung: RUNG_NAMES[outcome.rung], reason });
    return outcome;
  }

  /** The fallback ladder; never throws. */
  private async ladder(call: PredictCall, why: string): Promise<Outcome> {
    const { plan, variant, set, budget, stages } = call;
    computations.inc({ version: this.version, reason: why });
    const gathered: Gathered = {};
    const reasons: string[] = [];
    let label = "deadline_exceeded";
    if (budget.remainingMs() >= this.deps.config.PRIMARY_MIN_BUDGET_MS) {
      try {
        const outcome = await this.primary(call, gathered);
        if (plan.usesCache) void this.deps.cache.set(call.key, toEntry(outcome, plan.depth));
        return outcome;
      } catch (err) {
        reasons.push(String((err as Error).message));
        label = reasonLabel((err as { cause?: unknown }).cause ?? err);
      }
    } else {
      reasons.push(`deadline: ${Math.round(budget.remainingMs())} ms left, too little for the full pipeline`);
    }
    const reason = reasons.join("; ");

    if (plan.usesCache) {
      const hit = await stages.time("fallback_cache", () => this.deps.cache.anyForUser(call.key));
      if (hit) return this.fellBack(fromCache(hit, FallbackLevel.CACHED, hit.stale || hit.bucket !== plan.bucket, reason), label);
    }

    const user = gathered.user ?? this.deps.features.cachedUser(plan);
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
            ...base(variant),
            items: toRankedItems(candidates, scores, plan.depth, variant.maxPerCategory, topCategories(user, 3)),
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

    const popular = await this.popular(call, user).catch((err: unknown) => {
      reasons.push(describe("popular", err));
      return undefined;
    });
    if (popular) return this.fellBack({ ...popular, reason: reasons.join("; ") }, label);
    return this.fellBack(staticAnswer(call, reasons.join("; ")), label);
  }

  private async primary(call: PredictCall, gathered: Gathered): Promise<Outcome> {
    const { plan, variant, set, budget, stages } = call;
    const fetchBudget = budget.for("fetch");
    const [user, candidates] = await Promise.allSettled([
      stages.time("features", () => this.deps.features.user(plan, fetchBudget)).then((u) => (gathered.user = u)),
      stages.time("candidates", () => this.candidates(call, fetchBudget)).then((c) => (gathered.candidates = c)),
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
      ...base(variant),
      items: toRankedItems(candidates.value, scores, plan.depth, variant.maxPerCategory, topCategories(user.value, 3)),
      modelVersions,
      featureAgeSeconds: user.value.ageSeconds,
    };
  }

  /** Explicit candidates (categories from the catalogue), or retrieval's merged candidates. */
  private async candidates({ plan, set }: PredictCall, timeoutMs: number): Promise<RankCandidate[]> {
    if (plan.candidates.length > 0) {
      return plan.candidates.map((itemId) => ({ itemId, category: set.catalog.byId.get(itemId)?.category ?? "", sources: ["requested"] }));
    }
    return this.deps.retrieval.forUser(plan, plan.depth, timeoutMs);
  }

  /**
   * Popular items of the user's preferred categories, then overall: from the local
   * copy of the lists (no upstream call), else from retrieval when the copy holds
   * none; static items fill a short list.
   */
  private async popular(call: PredictCall, user: UserFeatures): Promise<Outcome> {
    const local = await call.stages.time("popular", async () => this.localPopular(call, user));
    if (local) return local;
    if (!this.deps.retrieval.configured) throw new Error("no popular lists held and no retrieval service configured (RETRIEVAL_ADDR)");
    const budgetMs = call.budget.for("popular");
    if (budgetMs <= 0) throw new StageTimeout("no budget left");
    const category = topCategories(user, 1)[0] ?? "";
    const popular = await call.stages.time("popular_retrieval", () => this.deps.retrieval.popular(category, call.plan.depth, budgetMs));
    const items: CachedItem[] = popular.map((c) => ({
      itemId: c.itemId,
      category: c.category,
      score: c.score,
      explanation: category ? `popular in ${category}, your favourite category` : `popular in ${c.category}`,
    }));
    return popularOutcome(call, items, user);
  }

  /** The popular rung from the local copy of the lists; undefined when it holds nothing for this user. */
  private localPopular(call: PredictCall, user: UserFeatures): Outcome | undefined {
    const { catalog } = call.set;
    const picks = pickPopular(this.deps.popular, preferredCategories(user, 3), call.plan.depth, (itemId) => catalog.byId.get(itemId)?.category);
    if (picks.length === 0) return undefined;
    const items: CachedItem[] = picks.map((pick) => ({
      itemId: pick.itemId,
      category: pick.category,
      score: pick.score,
      explanation: pick.preferred ? `popular in ${pick.category}, one of your favourite categories` : `popular in ${pick.category}`,
    }));
    return popularOutcome(call, items, user);
  }
}

/** A popular answer, topped up with static defaults when the list is short. */
function popularOutcome(call: PredictCall, items: CachedItem[], user: UserFeatures): Outcome {
  const depth = call.plan.depth;
  const seen = new Set(items.map((i) => i.itemId));
  for (const item of staticAnswer(call, "").items) {
    if (items.length >= depth) break;
    if (!seen.has(item.itemId)) items.push(item);
  }
  return { ...base(call.variant), items, rung: FallbackLevel.POPULAR, modelVersions: {}, featureAgeSeconds: user.ageSeconds };
}

function stageError(stage: string, err: unknown): Error {
  return new Error(describe(stage, err), { cause: err });
}

/** What every computed (not cached) outcome starts from. */
function base(variant: Variant) {
  return {
    rung: FallbackLevel.PRIMARY,
    reason: "",
    cacheLevel: CacheLevel.MISS,
    stale: false,
    experimentId: variant.experimentId,
    variant: variant.name,
  };
}

function fromCache(hit: CacheHit, rung: FallbackLevel, stale: boolean, reason: string): Outcome {
  const { entry } = hit;
  return {
    items: entry.items,
    rung,
    reason,
    cacheLevel: CACHE_LEVELS[hit.level],
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
function staticAnswer({ plan, variant, set }: PredictCall, reason: string): Outcome {
  const scored = set.catalog.popular.map((item) => ({ ...item, score: item.popularity }));
  const items = diversify(scored, plan.depth, variant.maxPerCategory).map((item) => ({
    itemId: item.itemId,
    category: item.category,
    score: item.score,
    explanation: `popular in ${item.category}`,
  }));
  return { ...base(variant), items, rung: FallbackLevel.STATIC, reason, modelVersions: { catalog: set.catalog.version }, featureAgeSeconds: 0 };
}
