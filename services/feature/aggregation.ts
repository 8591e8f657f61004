// How events become stream features, both halves in one place: the Redis operations
// the aggregator applies for one event (write side), and the features computed from
// the stored state at read time (read side). Windows slide at read time: the state
// holds bucketed counts and the read sums the buckets still inside each window, so a
// count falls back to 0 when activity stops, with no job rewriting it.
//
// Time rules (README, "Late and out-of-order events"): an event lands in the buckets
// of its own event time, whatever order it arrives in; an event older than the longest
// window when the aggregator sees it is counted in nothing.
import type { EventType } from "../../gen/recsys/common/v1/common_pb.js";
import {
  NO_CATEGORY,
  categoriesKey,
  popularBucketKey,
  popularLiveKey,
  recentKey,
  stateKey,
  trendingDayKey,
} from "./keys.js";
import {
  BUCKETS_PER_WINDOW,
  LONGEST_WINDOW_SECONDS,
  WINDOWS,
  popularLists,
  views,
  type JsonFeatureValue,
  type StreamView,
  type WindowName,
} from "./registry.js";

const DAY_MS = 86_400_000;
const HOUR_MS = 3_600_000;

/** An event as the aggregator reads it from the stream. */
export interface StreamEvent {
  id: string;
  userId: string;
  itemId: string;
  type: EventType;
  /** Event time, ms since the epoch. */
  ts: number;
  /** Resolved category; empty when unknown. */
  category: string;
}

/**
 * One Redis operation of the apply script (services/feature/lua.ts says what each
 * does with its arguments). Every op of an event runs only if that event's stream
 * entry was still pending, which makes the whole set exactly-once.
 */
export interface Op {
  op: "hincr" | "hincrf" | "touch" | "zincr" | "recent" | "sadd" | "pexpireat" | "tidy";
  key: string;
  args: string[];
}

/** Ops as the apply script reads them: a JSON array of [name, key index, ...args]. */
export function encodeOps(ops: readonly Op[], keyIndex: (key: string) => number): string {
  return JSON.stringify(ops.map((op) => [op.op, keyIndex(op.key), ...op.args]));
}

const bucketMs = (window: WindowName) => (WINDOWS[window] * 1000) / BUCKETS_PER_WINDOW;

const streamViews = views.filter((view): view is StreamView => view.source === "stream");

/**
 * The counters a view keeps: per bucket size (one per window), the event types some
 * feature counts over that window. An event increments only these, so an impression
 * costs no 24 h counter when no feature counts impressions over 24 h.
 */
function countedTypes(view: StreamView): Map<number, Set<EventType>> {
  const counted = new Map<number, Set<EventType>>();
  const add = (window: WindowName, types: readonly EventType[]) => {
    const size = bucketMs(window);
    const set = counted.get(size) ?? new Set<EventType>();
    counted.set(size, set);
    types.forEach((type) => set.add(type));
  };
  for (const { aggregation } of view.features) {
    if (aggregation.kind === "count") add(aggregation.window, aggregation.types);
    if (aggregation.kind === "ratio") add(aggregation.window, [...aggregation.numerator, ...aggregation.denominator]);
  }
  return counted;
}

const counters = new Map(streamViews.map((view) => [view, countedTypes(view)]));

const countField = (sizeMs: number, type: EventType, bucket: number) => `${sizeMs}:${type}:${bucket}`;
const decayedField = (halfLifeSeconds: number, day: number) => `d${halfLifeSeconds}:${day}`;
const latestField = (feature: string) => `lc:${feature}`;

/** Weight of an event at time ts under forward decay against its UTC day's start. */
export function forwardDecayWeight(ts: number, halfLifeSeconds: number): { day: number; weight: number } {
  const day = Math.floor(ts / DAY_MS);
  return { day, weight: 2 ** ((ts - day * DAY_MS) / (halfLifeSeconds * 1000)) };
}

/** Sum of forward-decayed day scores, as of now. */
export function decayedValue(days: Iterable<[day: number, score: number]>, halfLifeSeconds: number, now: number): number {
  let total = 0;
  for (const [day, score] of days) total += score * 2 ** ((day * DAY_MS - now) / (halfLifeSeconds * 1000));
  return total;
}

/** Whether the aggregator counts an event seen at `now` at all. */
export function isLate(ts: number, now: number): boolean {
  return ts < now - LONGEST_WINDOW_SECONDS * 1000;
}

/** Keys live this long after their last write (give or take a tidy interval); windows are empty by then anyway. */
const STATE_TTL_MS = LONGEST_WINDOW_SECONDS * 1000 + HOUR_MS;
/** Expired counters are deleted from a state hash, and expiries pushed back, at most about this often. */
export const UPKEEP_EVERY_MS = 60_000;

/** The operations for one event: `ops` count it, `upkeep` keeps the touched keys tidy. */
export interface EventOps {
  ops: Op[];
  /** Idempotent (expiry, trimming, the category index): run unguarded, at most once per key per batch, and need not run every time. */
  upkeep: Op[];
}

/**
 * The operations applying one event, for its partition. `now` is the aggregator's
 * clock; a late event gets none (the caller still acknowledges it).
 */
export function eventOps(event: StreamEvent, partition: number, now: number): EventOps {
  const ops: Op[] = [];
  const upkeep: Op[] = [];
  if (isLate(event.ts, now)) return { ops, upkeep };
  const ts = String(event.ts);
  const stateExpiry = String(now + STATE_TTL_MS);
  for (const view of streamViews) {
    const entityId = view.entity === "user" ? event.userId : event.itemId;
    const key = stateKey(partition, view.name, entityId);
    for (const [size, types] of counters.get(view)!) {
      if (types.has(event.type)) ops.push({ op: "hincr", key, args: [countField(size, event.type, Math.floor(event.ts / size)), "1"] });
    }
    // The latest-event fields of the entity: its last event time, session, latest values.
    let sessionGapMs = "";
    const latest: string[] = [];
    for (const feature of view.features) {
      const agg = feature.aggregation;
      switch (agg.kind) {
        case "recent_items": {
          const recent = recentKey(partition, view.name, entityId);
          ops.push({ op: "recent", key: recent, args: [event.itemId, ts, String(agg.size)] });
          upkeep.push({ op: "pexpireat", key: recent, args: [stateExpiry] });
          break;
        }
        case "last_category":
          if (event.category && agg.types.includes(event.type)) latest.push(latestField(feature.name), event.category);
          break;
        case "session_events":
          sessionGapMs = String(agg.gapSeconds * 1000);
          break;
        case "decayed":
          if (agg.types.includes(event.type)) {
            const { day, weight } = forwardDecayWeight(event.ts, agg.halfLifeSeconds);
            ops.push({ op: "hincrf", key, args: [decayedField(agg.halfLifeSeconds, day), String(weight)] });
          }
          break;
        default:
          break;
      }
    }
    ops.push({ op: "touch", key, args: [ts, sessionGapMs, ...latest] });
    upkeep.push({ op: "tidy", key, args: [String(now), stateExpiry, String(UPKEEP_EVERY_MS)] });
  }
  if (popularLists.types.includes(event.type)) {
    const hour = Math.floor(event.ts / HOUR_MS);
    const { day, weight } = forwardDecayWeight(event.ts, popularLists.trendingHalfLifeSeconds);
    // Counted in the event's category only: the "all" lists are merged from the
    // categories' at publish time, which halves the sorted-set updates per event.
    const category = event.category || NO_CATEGORY;
    const live = popularLiveKey(partition, category);
    const bucket = popularBucketKey(partition, category, hour);
    const trending = trendingDayKey(partition, category, day);
    const liveExpiry = String(now + STATE_TTL_MS + HOUR_MS);
    // An hour that left the window is subtracted by the publisher; an event of such an
    // hour that arrives late is added anyway and subtracted with it at the next publish.
    ops.push({ op: "zincr", key: live, args: [event.itemId, "1"] });
    ops.push({ op: "hincr", key: bucket, args: [event.itemId, "1"] });
    ops.push({ op: "zincr", key: trending, args: [event.itemId, String(weight)] });
    upkeep.push({ op: "pexpireat", key: live, args: [liveExpiry] });
    upkeep.push({ op: "pexpireat", key: bucket, args: [String((hour + 1) * HOUR_MS + STATE_TTL_MS + HOUR_MS)] });
    // A day counts while it is today or yesterday.
    upkeep.push({ op: "pexpireat", key: trending, args: [String((day + 2) * DAY_MS + HOUR_MS)] });
    upkeep.push({ op: "sadd", key: categoriesKey(partition), args: [category] });
    upkeep.push({ op: "pexpireat", key: categoriesKey(partition), args: [liveExpiry] });
  }
  return { ops, upkeep };
}

/** Events of one type in one bucket of one size. */
export interface CountCell {
  sizeMs: number;
  type: EventType;
  bucket: number;
  n: number;
}

/** What the state hash and recent set of one entity hold, parsed and merged over partitions. */
export interface EntityState {
  /** Parsed once here, since a cached state is read by many requests. */
  cells: CountCell[];
  /** Latest event time. */
  last: number;
  /** Feature name -> latest value and its event time. */
  latest: Map<string, { value: string; ts: number }>;
  session?: { start: number; last: number; events: number };
  /** "halfLife:day" -> forward-decayed score. */
  decayed: Map<string, number>;
  /** Item id -> latest event time. */
  recent: Map<string, number>;
}

/**
 * One partition's state of an entity, from the flat HGETALL reply of its hash and
 * the ZRANGE WITHSCORES reply of its recent set; undefined when it has no state there.
 */
export function parseState(hash: readonly string[], recent: readonly string[] = []): EntityState | undefined {
  if (hash.length === 0) return undefined;
  const state: EntityState = { cells: [], last: 0, latest: new Map(), decayed: new Map(), recent: new Map() };
  const latestAt = new Map<string, number>();
  const session = { s0: NaN, s1: NaN, sn: 0 };
  for (let i = 0; i + 1 < hash.length; i += 2) {
    const field = hash[i]!;
    const value = hash[i + 1]!;
    const first = field.charCodeAt(0);
    if (first >= 48 && first <= 57) {
      const a = field.indexOf(":");
      const b = field.indexOf(":", a + 1);
      state.cells.push({ sizeMs: Number(field.slice(0, a)), type: Number(field.slice(a + 1, b)) as EventType, bucket: Number(field.slice(b + 1)), n: Number(value) });
    } else if (field === "last") state.last = Number(value);
    else if (field === "s0" || field === "s1" || field === "sn") session[field] = Number(value);
    else if (field.startsWith("d")) state.decayed.set(field.slice(1), Number(value));
    else if (field.startsWith("lc:")) {
      if (field.endsWith("@")) latestAt.set(field.slice(3, -1), Number(value));
      else state.latest.set(field.slice(3), { value, ts: 0 });
    }
  }
  for (const [name, latest] of state.latest) latest.ts = latestAt.get(name) ?? 0;
  if (!Number.isNaN(session.s1)) state.session = { start: session.s0, last: session.s1, events: session.sn };
  for (let i = 0; i + 1 < recent.length; i += 2) state.recent.set(recent[i]!, Number(recent[i + 1]));
  return state;
}

/**
 * Partials of one entity from several partitions as one state: counts add up (the
 * windows sum every cell, so cells of the same bucket can simply sit side by side), the
 * latest values win. A session split over partitions is approximated by the latest
 * one plus the partials that overlap it (exact with one partition).
 */
export function mergeStates(parts: (EntityState | undefined)[]): EntityState | undefined {
  const present = parts.filter((p): p is EntityState => p !== undefined);
  if (present.length <= 1) return present[0];
  const merged: EntityState = { cells: present.flatMap((p) => p.cells), last: 0, latest: new Map(), decayed: new Map(), recent: new Map() };
  for (const part of present) {
    for (const [field, n] of part.decayed) merged.decayed.set(field, (merged.decayed.get(field) ?? 0) + n);
    merged.last = Math.max(merged.last, part.last);
    for (const [name, latest] of part.latest) {
      if ((merged.latest.get(name)?.ts ?? -Infinity) <= latest.ts) merged.latest.set(name, latest);
    }
    for (const [item, ts] of part.recent) merged.recent.set(item, Math.max(ts, merged.recent.get(item) ?? -Infinity));
  }
  const sessions = present.flatMap((p) => (p.session ? [p.session] : [])).sort((x, y) => y.last - x.last);
  const newest = sessions[0];
  if (newest) {
    const overlapping = sessions.filter((s) => s.last >= newest.start);
    merged.session = {
      start: Math.min(...overlapping.map((s) => s.start)),
      last: newest.last,
      events: overlapping.reduce((sum, s) => sum + s.events, 0),
    };
  }
  return merged;
}

/** Events of these types in the window ending now: the current bucket and the 11 before it. */
function windowCount(cells: CountCell[], window: WindowName, types: readonly EventType[], now: number): number {
  const size = bucketMs(window);
  const oldest = Math.floor(now / size) - (BUCKETS_PER_WINDOW - 1);
  let total = 0;
  for (const cell of cells) if (cell.sizeMs === size && cell.bucket >= oldest && types.includes(cell.type)) total += cell.n;
  return total;
}

/** The values of a stream view's features for one entity, as of now. */
export function streamFeatures(view: StreamView, state: EntityState, now: number): Map<string, JsonFeatureValue> {
  const values = new Map<string, JsonFeatureValue>();
  const cells = state.cells;
  for (const feature of view.features) {
    const agg = feature.aggregation;
    switch (agg.kind) {
      case "count":
        values.set(feature.name, String(windowCount(cells, agg.window, agg.types, now)));
        break;
      case "ratio": {
        const denominator = windowCount(cells, agg.window, agg.denominator, now);
        values.set(feature.name, denominator > 0 ? windowCount(cells, agg.window, agg.numerator, now) / denominator : feature.default);
        break;
      }
      case "active":
        values.set(feature.name, now - state.last <= WINDOWS[agg.window] * 1000);
        break;
      case "seconds_since_last":
        values.set(feature.name, Math.max(0, (now - state.last) / 1000));
        break;
      case "recent_items":
        values.set(
          feature.name,
          [...state.recent.entries()]
            .sort((x, y) => y[1] - x[1])
            .slice(0, agg.size)
            .map(([item]) => item),
        );
        break;
      case "last_category":
        values.set(feature.name, state.latest.get(feature.name)?.value ?? feature.default);
        break;
      case "session_events":
        values.set(feature.name, String(state.session && now - state.session.last <= agg.gapSeconds * 1000 ? state.session.events : 0));
        break;
      case "decayed": {
        const prefix = `${agg.halfLifeSeconds}:`;
        const days: [number, number][] = [];
        for (const [field, score] of state.decayed) if (field.startsWith(prefix)) days.push([Number(field.slice(prefix.length)), score]);
        values.set(feature.name, decayedValue(days, agg.halfLifeSeconds, now));
        break;
      }
    }
  }
  return values;
}
