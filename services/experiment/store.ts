// Redis storage: definitions (a hash of JSON definitions plus a change counter, written
// with optimistic concurrency and announced on pub/sub) and, per experiment, the
// deduplicated events and the per-variant aggregates GetResults reads. Every write of
// events is one Lua script, so a batch is deduplicated and counted atomically.
import { fromJsonString, toJsonString } from "@bufbuild/protobuf";
import { ReplyError } from "ioredis";
import { Counter } from "prom-client";
import { ExperimentSchema, type Experiment } from "../../gen/recsys/experiment/v1/experiment_pb.js";
import { Code, ConnectError, registry, Reason, statusError, type Logger } from "../kit/index.js";
import type { RedisClient } from "../kit/redis.js";
import type { VariantAggregate } from "./results.js";

// Hash tags keep the keys a script touches in one Redis Cluster slot.
const DEFINITIONS_KEY = "{recsys:experiment}:definitions";
const VERSION_KEY = "{recsys:experiment}:version";
/** Pub/sub channel announcing every definition change; the message is the new version. */
export const CHANGES_CHANNEL = "recsys:experiment:changes";

function eventKeys(experimentId: string) {
  const prefix = `{recsys:experiment:${experimentId}}`;
  return {
    exposureIds: `${prefix}:exposure_ids`,
    /** user id -> variant of the user's first exposure. */
    userVariant: `${prefix}:user_variant`,
    /** "exposures:<variant>", "users:<variant>". */
    counts: `${prefix}:counts`,
    outcomeIds: `${prefix}:outcome_ids`,
    /** user id -> the user's total of the metric. */
    metricTotals: (metric: string) => `${prefix}:metric:${metric}:user_totals`,
    /** "conversions:<variant>", "sum:<variant>", "sumsq:<variant>". */
    metricAggregates: (metric: string) => `${prefix}:metric:${metric}:aggregates`,
  };
}

// KEYS: definitions, version. ARGV: expected version, id, definition JSON, channel.
// Writes only if nothing changed since the caller's snapshot; returns the new version or -1.
const WRITE_DEFINITION = `
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[1] then return -1 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
local version = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[4], version)
return version`;

// KEYS: exposure ids, user -> variant, counts. ARGV: (exposure id, user id, variant)*.
// Returns how many were new.
const RECORD_EXPOSURES = `
local recorded = 0
for i = 1, #ARGV, 3 do
  if redis.call('SADD', KEYS[1], ARGV[i]) == 1 then
    recorded = recorded + 1
    redis.call('HINCRBY', KEYS[3], 'exposures:' .. ARGV[i + 2], 1)
    if redis.call('HSETNX', KEYS[2], ARGV[i + 1], ARGV[i + 2]) == 1 then
      redis.call('HINCRBY', KEYS[3], 'users:' .. ARGV[i + 2], 1)
    end
  end
end
return recorded`;

// KEYS: outcome ids, user -> variant, then per metric m (1-based): totals at 1 + 2m,
// aggregates at 2 + 2m. ARGV: (outcome id, user id, metric index, value)*.
// All or nothing: returns -(1 + index) of the first outcome whose user was never
// exposed, else how many were new. A user's total t grows by v, so the sum of squares
// of totals grows by (t + v)^2 - t^2 = 2tv + v^2.
const RECORD_OUTCOMES = `
for i = 1, #ARGV, 4 do
  if redis.call('HEXISTS', KEYS[2], ARGV[i + 1]) == 0 then return -1 - (i - 1) / 4 end
end
local recorded = 0
for i = 1, #ARGV, 4 do
  if redis.call('SADD', KEYS[1], ARGV[i]) == 1 then
    recorded = recorded + 1
    local user, m, value = ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3]
    local variant = redis.call('HGET', KEYS[2], user)
    local totals, aggregates = KEYS[1 + 2 * m], KEYS[2 + 2 * m]
    local before = redis.call('HGET', totals, user)
    local t, v = tonumber(before or '0'), tonumber(value)
    redis.call('HINCRBYFLOAT', totals, user, value)
    if not before then redis.call('HINCRBY', aggregates, 'conversions:' .. variant, 1) end
    redis.call('HINCRBYFLOAT', aggregates, 'sum:' .. variant, value)
    redis.call('HINCRBYFLOAT', aggregates, 'sumsq:' .. variant, string.format('%.17g', 2 * t * v + v * v))
  end
end
return recorded`;

const eventsRecorded = new Counter({
  name: "recsys_experiment_events_total",
  help: "Exposure and outcome events received, by kind and result (recorded or duplicate).",
  labelNames: ["kind", "result"] as const,
  registers: [registry],
});

/** The store's Lua scripts, to register on its client (connectRedis's scripts). */
export const experimentScripts = {
  experimentWriteDefinition: { lua: WRITE_DEFINITION },
  experimentRecordExposures: { lua: RECORD_EXPOSURES },
  experimentRecordOutcomes: { lua: RECORD_OUTCOMES },
};

/** Redis failures as gRPC statuses: unreachable or slow -> UNAVAILABLE; a script error -> INTERNAL. */
function storeError(err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  if (err instanceof ReplyError) return new ConnectError("experiment store error", Code.Internal, undefined, undefined, err);
  return statusError(Code.Unavailable, Reason.StoreUnavailable, `experiment store (Redis) unavailable: ${(err as Error).message}`);
}

async function guarded<T>(work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (err) {
    throw storeError(err);
  }
}

type Script = (...args: unknown[]) => Promise<unknown>;

export interface DefinitionsSnapshot {
  /** Change counter: incremented by every definition write. */
  version: number;
  experiments: Experiment[];
}

export interface ExposureEvent {
  exposureId: string;
  userId: string;
  variant: string;
}

export interface OutcomeEvent {
  outcomeId: string;
  userId: string;
  metric: string;
  value: number;
}

export class ExperimentStore {
  private readonly scripts: Record<"writeDefinition" | "recordExposures" | "recordOutcomes", Script>;

  /** redis: a client with experimentScripts registered. */
  constructor(
    private readonly redis: RedisClient,
    private readonly log: Logger,
  ) {
    const commands = redis as unknown as Record<string, Script>;
    this.scripts = {
      writeDefinition: commands.experimentWriteDefinition!.bind(redis),
      recordExposures: commands.experimentRecordExposures!.bind(redis),
      recordOutcomes: commands.experimentRecordOutcomes!.bind(redis),
    };
  }

  /** Every definition and the version they are at, read atomically. */
  snapshot(): Promise<DefinitionsSnapshot> {
    return guarded(async () => {
      const replies = await this.redis.multi().hgetall(DEFINITIONS_KEY).get(VERSION_KEY).exec();
      const [definitions, version] = (replies ?? []).map(([err, value]) => {
        if (err) throw err;
        return value;
      }) as [Record<string, string>, string | null];
      const experiments: Experiment[] = [];
      for (const [id, json] of Object.entries(definitions)) {
        try {
          experiments.push(fromJsonString(ExperimentSchema, json));
        } catch (err) {
          this.log.error({ id, err: (err as Error).message }, "unreadable experiment definition skipped");
        }
      }
      return { version: Number(version ?? 0), experiments };
    });
  }

  version(): Promise<number> {
    return guarded(async () => Number((await this.redis.get(VERSION_KEY)) ?? 0));
  }

  /** Stores a definition unless any definition changed since expectedVersion; the new version, or undefined on a conflict. */
  writeDefinition(experiment: Experiment, expectedVersion: number): Promise<number | undefined> {
    return guarded(async () => {
      const json = toJsonString(ExperimentSchema, experiment);
      const keys = [DEFINITIONS_KEY, VERSION_KEY];
      const version = Number(await this.scripts.writeDefinition(keys.length, keys, [String(expectedVersion), experiment.id, json, CHANGES_CHANNEL]));
      return version < 0 ? undefined : version;
    });
  }

  /** Records one experiment's exposures; returns how many were new (the rest were duplicates). */
  recordExposures(experimentId: string, exposures: ExposureEvent[]): Promise<number> {
    return guarded(async () => {
      const keys = eventKeys(experimentId);
      const args = exposures.flatMap((e) => [e.exposureId, e.userId, e.variant]);
      const recorded = Number(await this.scripts.recordExposures(3, [keys.exposureIds, keys.userVariant, keys.counts], args));
      eventsRecorded.inc({ kind: "exposure", result: "recorded" }, recorded);
      eventsRecorded.inc({ kind: "exposure", result: "duplicate" }, exposures.length - recorded);
      return recorded;
    });
  }

  /** The variant each user was first exposed to (undefined: never exposed). */
  exposedVariants(experimentId: string, userIds: string[]): Promise<(string | undefined)[]> {
    return guarded(async () => {
      const variants = await this.redis.hmget(eventKeys(experimentId).userVariant, ...userIds);
      return variants.map((v) => v ?? undefined);
    });
  }

  /**
   * Records one experiment's outcomes, all or none; returns how many were new, or
   * { unexposed: index } of the first outcome whose user was never exposed.
   */
  recordOutcomes(experimentId: string, outcomes: OutcomeEvent[]): Promise<{ recorded: number } | { unexposed: number }> {
    return guarded(async () => {
      const keys = eventKeys(experimentId);
      const metrics = [...new Set(outcomes.map((o) => o.metric))];
      const scriptKeys = [keys.outcomeIds, keys.userVariant, ...metrics.flatMap((m) => [keys.metricTotals(m), keys.metricAggregates(m)])];
      const args = outcomes.flatMap((o) => [o.outcomeId, o.userId, String(metrics.indexOf(o.metric) + 1), String(o.value)]);
      const result = Number(await this.scripts.recordOutcomes(scriptKeys.length, scriptKeys, args));
      if (result < 0) return { unexposed: -result - 1 };
      eventsRecorded.inc({ kind: "outcome", result: "recorded" }, result);
      eventsRecorded.inc({ kind: "outcome", result: "duplicate" }, outcomes.length - result);
      return { recorded: result };
    });
  }

  /** Per-variant aggregates of one metric. */
  aggregates(experimentId: string, metric: string): Promise<Map<string, VariantAggregate>> {
    return guarded(async () => {
      const keys = eventKeys(experimentId);
      const replies = await this.redis.multi().hgetall(keys.counts).hgetall(keys.metricAggregates(metric)).exec();
      const [counts, metricAggregates] = (replies ?? []).map(([err, value]) => {
        if (err) throw err;
        return value as Record<string, string>;
      }) as [Record<string, string>, Record<string, string>];
      const fields = { ...counts, ...metricAggregates };
      const byVariant = new Map<string, VariantAggregate>();
      for (const [field, value] of Object.entries(fields)) {
        const colon = field.indexOf(":");
        const [kind, variant] = [field.slice(0, colon), field.slice(colon + 1)];
        const aggregate = byVariant.get(variant) ?? { exposures: 0, users: 0, conversions: 0, sum: 0, sumOfSquares: 0 };
        const n = Number(value);
        if (kind === "exposures") aggregate.exposures = n;
        else if (kind === "users") aggregate.users = n;
        else if (kind === "conversions") aggregate.conversions = n;
        else if (kind === "sum") aggregate.sum = n;
        else if (kind === "sumsq") aggregate.sumOfSquares = n;
        byVariant.set(variant, aggregate);
      }
      return byVariant;
    });
  }
}
