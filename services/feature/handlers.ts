import { create } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { FeatureValue } from "../../gen/recsys/common/v1/common_pb.js";
import {
  EntityFeaturesSchema,
  EntityType,
  FeatureResultSchema,
  FeatureService,
  FeatureStatus,
  type EntityFeatures,
  type Event,
  type FeatureResult,
  type GetOnlineFeaturesRequest,
  type WriteFeaturesRequest,
} from "../../gen/recsys/feature/v1/feature_pb.js";
import { implement, invalidArgument } from "../kit/index.js";
import { outcomesOf, publishOutcomes } from "../kit/outcomes.js";
import { streamFeatures } from "./aggregation.js";
import { fromFeatureValue, toFeatureValue } from "./codec.js";
import type { FeatureConfig } from "./config.js";
import { appendEvents, checkEvents } from "./ingest.js";
import { eventsIngested, ingestBatchesRejected, outcomesUnpublished, readSeconds } from "./metrics.js";
import { isKnownTimeZone, requestFeatures } from "./on-demand.js";
import { unavailable } from "./redis.js";
import { findView, views, type BatchView, type FeatureDef, type FeatureView, type JsonFeatureValue, type StreamView } from "./registry.js";
import type { OnlineStore, RowWrite } from "./store.js";

const ENTITY_TYPES: Record<FeatureView["entity"], EntityType> = {
  user: EntityType.USER,
  item: EntityType.ITEM,
  user_item: EntityType.USER_ITEM,
  request: EntityType.UNSPECIFIED,
};

/** Features to read from one view. */
interface ViewRead {
  view: BatchView | StreamView;
  features: FeatureDef[];
}

interface ReadPlan {
  user: ViewRead[];
  item: ViewRead[];
  request: FeatureDef[];
}

const plans = new Map<string, ReadPlan>();

/** The plan for a feature_refs list; callers send the same few lists over and over. */
function planFor(refs: readonly string[]): ReadPlan {
  const key = refs.join(",");
  let plan = plans.get(key);
  if (!plan) {
    plan = planRead(refs);
    if (plans.size < 1_000) plans.set(key, plan);
  }
  return plan;
}

/** The views and features feature_refs name ("view" or "view:feature"; none means all). */
function planRead(refs: readonly string[]): ReadPlan {
  const selected = new Map<FeatureView, Set<FeatureDef>>();
  if (refs.length === 0) for (const view of views) selected.set(view, new Set(view.features));
  refs.forEach((ref, i) => {
    const [viewName, featureName] = ref.split(":") as [string, string | undefined];
    const view = findView(viewName);
    if (!view) throw invalidArgument(`feature_refs[${i}]`, `no feature view "${viewName}"; ListFeatureViews lists them`);
    if (view.entity === "user_item") throw invalidArgument(`feature_refs[${i}]`, `view "${viewName}" is keyed by user-item pairs, which this read does not take`);
    const chosen = selected.get(view) ?? new Set<FeatureDef>();
    selected.set(view, chosen);
    if (featureName === undefined) {
      view.features.forEach((f) => chosen.add(f));
      return;
    }
    const feature = view.features.find((f) => f.name === featureName);
    if (!feature) throw invalidArgument(`feature_refs[${i}]`, `view "${viewName}" has no feature "${featureName}"`);
    chosen.add(feature);
  });
  const plan: ReadPlan = { user: [], item: [], request: [] };
  for (const [view, features] of selected) {
    if (view.source === "on_demand") plan.request.push(...features);
    else if (view.entity === "user" || view.entity === "item") plan[view.entity].push({ view, features: [...features] });
  }
  return plan;
}

const defaultResults = new Map<FeatureDef, FeatureResult>();

/** The shared DEFAULT result of a feature (messages are not mutated, so one object serves every response). */
function defaultResult(feature: FeatureDef): FeatureResult {
  let result = defaultResults.get(feature);
  if (!result) {
    result = create(FeatureResultSchema, { value: toFeatureValue(feature.type, feature.default), status: FeatureStatus.DEFAULT, ageSeconds: 0 });
    defaultResults.set(feature, result);
  }
  return result;
}

/**
 * A result built as the plain object protobuf-es messages are: a response holds
 * thousands of them, and skipping create() per result saves about a millisecond a read.
 */
function result(value: FeatureValue, status: FeatureStatus, ageSeconds: number): FeatureResult {
  return { $typeName: "recsys.feature.v1.FeatureResult", value, status, ageSeconds };
}

const refs = new Map<FeatureDef, string>();

/** "view:feature", built once per feature. */
function refOf(view: FeatureView, feature: FeatureDef): string {
  let ref = refs.get(feature);
  if (ref === undefined) refs.set(feature, (ref = `${view.name}:${feature.name}`));
  return ref;
}

/** Every requested feature of every entity, by entity position then "view:feature". */
async function readEntities(store: OnlineStore, reads: ViewRead[], ids: string[], now: number) {
  const out = ids.map(() => ({}) as Record<string, FeatureResult>);
  if (ids.length === 0) return out;
  await Promise.all(
    reads.map(async ({ view, features }) => {
      if (view.source === "batch") {
        const rows = await store.readRows(view, ids);
        const ttlMs = view.ttlSeconds * 1000;
        rows.forEach((row, i) => {
          const age = row ? Math.max(0, now - row.eventTimeMs) / 1000 : 0;
          const expired = row !== undefined && ttlMs > 0 && now - row.eventTimeMs > ttlMs;
          for (const feature of features) {
            const value = row?.values.get(feature.name);
            const ref = refOf(view, feature);
            if (!value) out[i]![ref] = defaultResult(feature);
            else if (expired) out[i]![ref] = result(defaultResult(feature).value!, FeatureStatus.EXPIRED, age);
            else out[i]![ref] = result(value, FeatureStatus.PRESENT, age);
          }
        });
      } else {
        const states = await store.readStates(view, ids);
        states.forEach((state, i) => {
          const values = state ? streamFeatures(view, state, now) : undefined;
          const age = state ? Math.max(0, now - state.last) / 1000 : 0;
          for (const feature of features) {
            const value = values?.get(feature.name);
            out[i]![refOf(view, feature)] = value === undefined ? defaultResult(feature) : result(toFeatureValue(feature.type, value), FeatureStatus.PRESENT, age);
          }
        });
      }
    }),
  );
  return out;
}

async function getOnlineFeatures(store: OnlineStore, request: GetOnlineFeaturesRequest) {
  const plan = planFor(request.featureRefs);
  const context = request.context;
  if (context && !isKnownTimeZone(context.timeZone)) throw invalidArgument("context.time_zone", `unknown IANA time zone "${context.timeZone}"`);
  const now = Date.now();
  const started = performance.now();
  let users: Record<string, FeatureResult>[];
  let items: Record<string, FeatureResult>[];
  try {
    [users, items] = await Promise.all([readEntities(store, plan.user, request.userIds, now), readEntities(store, plan.item, request.itemIds, now)]);
  } catch (err) {
    throw unavailable(err);
  }
  readSeconds.observe((performance.now() - started) / 1000);
  const entity = (entityId: string, features: Record<string, FeatureResult>): EntityFeatures => create(EntityFeaturesSchema, { entityId, features });
  const requestFeaturesOut: Record<string, FeatureResult> = {};
  if (context && plan.request.length > 0) {
    const values = requestFeatures(context, now);
    for (const feature of plan.request) {
      requestFeaturesOut[feature.name] = result(toFeatureValue(feature.type, values.get(feature.name)!), FeatureStatus.ON_DEMAND, 0);
    }
  }
  return {
    users: request.userIds.map((id, i) => entity(id, users[i]!)),
    items: request.itemIds.map((id, i) => entity(id, items[i]!)),
    requestFeatures: requestFeaturesOut,
  };
}

/** Rows checked against the registry, all of them before any is written. */
function checkRows(request: WriteFeaturesRequest, now: number, maxFutureMs: number): RowWrite[] {
  return request.rows.map((row, i) => {
    const view = findView(row.featureView);
    if (!view) throw invalidArgument(`rows[${i}].feature_view`, `no feature view "${row.featureView}"`);
    if (view.source !== "batch") throw invalidArgument(`rows[${i}].feature_view`, `"${view.name}" is a ${view.source} view: its values are computed, not written`);
    if (ENTITY_TYPES[view.entity] !== row.entityType) {
      throw invalidArgument(`rows[${i}].entity_type`, `view "${view.name}" is keyed by ${view.entity}`);
    }
    const eventTimeMs = timestampMs(row.eventTime!);
    if (eventTimeMs > now + maxFutureMs) throw invalidArgument(`rows[${i}].event_time`, `${new Date(eventTimeMs).toISOString()} is in the future`);
    const values: Record<string, JsonFeatureValue> = {};
    for (const [name, value] of Object.entries(row.values)) {
      const field = `rows[${i}].values[${JSON.stringify(name)}]`;
      // An unset value is null: nothing stored, the default served.
      if (value.kind.case === undefined) continue;
      const feature = view.features.find((f) => f.name === name);
      if (!feature) throw invalidArgument(field, `view "${view.name}" has no feature "${name}"`);
      const checked = fromFeatureValue(feature.type, value);
      if ("error" in checked) throw invalidArgument(field, checked.error);
      values[name] = checked.value;
    }
    return { view, entityId: row.entityId, eventTimeMs, values };
  });
}

export interface FeatureDeps {
  store: OnlineStore;
  config: FeatureConfig;
  /**
   * Where event batches are appended (default: the store's connection). With INGEST_REPLICA_ACKS
   * its WAIT holds the connection until a replica confirms (up to REDIS_COMMAND_TIMEOUT_MS),
   * so it must not be the connection reads and health checks use.
   */
  ingestRedis?: OnlineStore["redis"];
}

export function featureService({ store, config, ingestRedis = store.redis }: FeatureDeps) {
  const maxFutureMs = config.MAX_EVENT_FUTURE_S * 1000;

  /** One atomic batch: every event checked, then appended all together (or rejected whole). */
  async function ingest(events: Event[], where = "") {
    try {
      checkEvents(events, Date.now(), maxFutureMs, where);
    } catch (err) {
      ingestBatchesRejected.inc();
      throw err;
    }
    let counts: { accepted: number; duplicates: number };
    try {
      counts = await appendEvents(ingestRedis, events, config.PARTITIONS, config.EVENT_DEDUPE_TTL_S, { replicaAcks: config.INGEST_REPLICA_ACKS, waitMs: config.REDIS_COMMAND_TIMEOUT_MS });
    } catch (err) {
      throw unavailable(err);
    }
    eventsIngested.inc({ result: "accepted" }, counts.accepted);
    eventsIngested.inc({ result: "duplicate" }, counts.duplicates);
    const outcomes = outcomesOf(events, (e) => timestampMs(e.timestamp!));
    publishOutcomes(ingestRedis, outcomes).catch(() => outcomesUnpublished.inc(outcomes.length));
    return counts;
  }

  return implement(FeatureService, {
    getOnlineFeatures: (request) => getOnlineFeatures(store, request),

    async writeFeatures(request) {
      const rows = checkRows(request, Date.now(), maxFutureMs);
      try {
        const { written, stale } = await store.writeRows(rows);
        return { rowsWritten: written, rowsSkippedStale: stale };
      } catch (err) {
        throw unavailable(err);
      }
    },

    ingestEvents: (request) => ingest(request.events),

    async ingestEventStream(requests) {
      const totals = { accepted: 0, duplicates: 0, batches: 0 };
      for await (const request of requests) {
        const { accepted, duplicates } = await ingest(request.events, ` (in batch ${totals.batches}; the batches before it were accepted)`);
        totals.accepted += accepted;
        totals.duplicates += duplicates;
        totals.batches++;
      }
      return totals;
    },

    listFeatureViews: () => ({
      views: views.map((view) => ({
        name: view.name,
        entityType: ENTITY_TYPES[view.entity],
        ttlSeconds: BigInt(view.source === "batch" ? view.ttlSeconds : 0),
        source: view.source,
        features: view.features.map((f) => ({ name: f.name, type: f.type, defaultValue: toFeatureValue(f.type, f.default), description: f.description })),
      })),
    }),
  });
}
