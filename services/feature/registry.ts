// The feature registry: every feature view the service serves, the materialiser loads
// and the stream aggregator computes. One typed file, read by all three.
import { EventType } from "../../gen/recsys/common/v1/common_pb.js";

export type FeatureType = "double" | "int64" | "string" | "bool" | "float_list" | "string_list" | "double_map";

/** A feature value as plain JSON, the way rows are stored and files carry them; int64 as a decimal string. */
export type JsonFeatureValue = number | string | boolean | number[] | string[] | { [key: string]: number };

/** Sliding windows of the stream features, in seconds. */
export const WINDOWS = { "1m": 60, "5m": 300, "15m": 900, "1h": 3600, "24h": 86_400 } as const;
export type WindowName = keyof typeof WINDOWS;

/**
 * Each window is counted in this many buckets, so a window of W counts the events of
 * the current bucket and the ones before it back to W - W/12 (never older than W).
 */
export const BUCKETS_PER_WINDOW = 12;

/** Events older than this (at aggregation time) are counted in nothing. */
export const LONGEST_WINDOW_SECONDS = Math.max(...Object.values(WINDOWS));

/** Interaction events: what a user chose, as opposed to what we showed (impressions). */
export const INTERACTIONS: readonly EventType[] = [EventType.VIEW, EventType.CLICK, EventType.ADD_TO_CART, EventType.PURCHASE];
const ALL_TYPES: readonly EventType[] = [EventType.IMPRESSION, ...INTERACTIONS];

/** How the aggregator derives a stream feature from an entity's events. */
export type StreamAggregation =
  | { kind: "count"; window: WindowName; types: readonly EventType[] }
  /** numerator count / denominator count over the window; the default when the denominator is 0. */
  | { kind: "ratio"; window: WindowName; numerator: readonly EventType[]; denominator: readonly EventType[] }
  | { kind: "active"; window: WindowName }
  | { kind: "seconds_since_last" }
  /** Distinct item ids of the latest events, newest first. */
  | { kind: "recent_items"; size: number }
  /** Category of the latest event of these types (by event time). */
  | { kind: "last_category"; types: readonly EventType[] }
  /** Events of the current session; a session ends after gapSeconds without events. */
  | { kind: "session_events"; gapSeconds: number }
  /** Exponentially decayed event count (forward decay), as of the read. */
  | { kind: "decayed"; halfLifeSeconds: number; types: readonly EventType[] };

export interface FeatureDef {
  name: string;
  type: FeatureType;
  /** Served when the value is missing or expired. */
  default: JsonFeatureValue;
  description: string;
}

export interface StreamFeatureDef extends FeatureDef {
  aggregation: StreamAggregation;
}

export type EntityKind = "user" | "item" | "user_item";

export interface BatchView {
  name: string;
  source: "batch";
  entity: EntityKind;
  /** Values older than this (by their event time) are not served. */
  ttlSeconds: number;
  features: FeatureDef[];
}

export interface StreamView {
  name: string;
  source: "stream";
  entity: "user" | "item";
  features: StreamFeatureDef[];
}

export interface OnDemandView {
  name: string;
  source: "on_demand";
  entity: "request";
  features: FeatureDef[];
}

export type FeatureView = BatchView | StreamView | OnDemandView;

const DAY = 86_400;

const count = (name: string, window: WindowName, types: readonly EventType[], what: string): StreamFeatureDef => ({
  name,
  type: "int64",
  default: "0",
  description: `${what} in the last ${window}`,
  aggregation: { kind: "count", window, types },
});

const ctr = (name: string, window: WindowName, whose: string): StreamFeatureDef => ({
  name,
  type: "double",
  default: 0,
  description: `${whose} clicks / impressions in the last ${window} (0 without impressions)`,
  aggregation: { kind: "ratio", window, numerator: [EventType.CLICK], denominator: [EventType.IMPRESSION] },
});

const sinceLast: StreamFeatureDef = {
  name: "seconds_since_last_event",
  type: "double",
  default: DAY,
  description: "seconds since the latest event (by event time); the default means none in the last day",
  aggregation: { kind: "seconds_since_last" },
};

export const TRENDING_HALF_LIFE_SECONDS = 3600;

export const views: readonly FeatureView[] = [
  {
    name: "user_profile",
    source: "batch",
    entity: "user",
    ttlSeconds: 7 * DAY,
    features: [
      { name: "user_log_events", type: "double", default: 0, description: "log(1 + the user's events in the training window)" },
      { name: "user_ctr", type: "double", default: 0, description: "the user's smoothed click-through rate in the training window" },
      { name: "category_affinity", type: "double_map", default: {}, description: "share of the user's interactions per category" },
      { name: "user_events", type: "int64", default: "0", description: "the user's events in the training window" },
      { name: "user_views", type: "int64", default: "0", description: "the user's views in the training window" },
      { name: "user_clicks", type: "int64", default: "0", description: "the user's clicks in the training window" },
      { name: "last_click_category", type: "string", default: "", description: "category of the user's last click before the training cutoff" },
      { name: "last_click_time", type: "string", default: "", description: "ISO 8601 time of the user's last click before the training cutoff" },
    ],
  },
  {
    name: "item_profile",
    source: "batch",
    entity: "item",
    ttlSeconds: 7 * DAY,
    features: [
      { name: "item_log_popularity", type: "double", default: 0, description: "log(1 + the item's events in the training window)" },
      { name: "item_ctr", type: "double", default: 0, description: "the item's smoothed click-through rate in the training window" },
      { name: "category", type: "string", default: "", description: "the item's catalogue category" },
      { name: "item_events", type: "int64", default: "0", description: "the item's events in the training window" },
      { name: "item_views", type: "int64", default: "0", description: "the item's views in the training window" },
      { name: "item_clicks", type: "int64", default: "0", description: "the item's clicks in the training window" },
      { name: "item_daily_avg_events", type: "double", default: 0, description: "(the item's events in the training window + 1) / window days" },
      { name: "item_events_24h", type: "int64", default: "0", description: "the item's events in the 24 h before the training cutoff" },
    ],
  },
  {
    name: "user_stream",
    source: "stream",
    entity: "user",
    features: [
      count("clicks_1m", "1m", [EventType.CLICK], "clicks"),
      count("clicks_5m", "5m", [EventType.CLICK], "clicks"),
      count("clicks_1h", "1h", [EventType.CLICK], "clicks"),
      count("clicks_24h", "24h", [EventType.CLICK], "clicks"),
      count("views_5m", "5m", [EventType.VIEW], "views"),
      count("views_1h", "1h", [EventType.VIEW], "views"),
      count("impressions_5m", "5m", [EventType.IMPRESSION], "impressions"),
      count("impressions_1h", "1h", [EventType.IMPRESSION], "impressions"),
      count("carts_1h", "1h", [EventType.ADD_TO_CART], "add-to-carts"),
      count("purchases_24h", "24h", [EventType.PURCHASE], "purchases"),
      count("events_1h", "1h", ALL_TYPES, "events of any type"),
      ctr("ctr_5m", "5m", "the user's"),
      ctr("ctr_1h", "1h", "the user's"),
      sinceLast,
      {
        name: "active_5m",
        type: "bool",
        default: false,
        description: "any event in the last 5m",
        aggregation: { kind: "active", window: "5m" },
      },
      {
        name: "recent_items",
        type: "string_list",
        default: [],
        description: "the 20 items the user acted on last (distinct, newest first)",
        aggregation: { kind: "recent_items", size: 20 },
      },
      {
        name: "last_click_category",
        type: "string",
        default: "",
        description: "category of the user's latest click",
        aggregation: { kind: "last_category", types: [EventType.CLICK] },
      },
      {
        name: "session_events",
        type: "int64",
        default: "0",
        description: "events in the current session (a session ends after 30 minutes without events)",
        aggregation: { kind: "session_events", gapSeconds: 1800 },
      },
    ],
  },
  {
    name: "item_stream",
    source: "stream",
    entity: "item",
    features: [
      count("events_15m", "15m", ALL_TYPES, "events of any type"),
      count("events_1h", "1h", ALL_TYPES, "events of any type"),
      count("events_24h", "24h", ALL_TYPES, "events of any type"),
      count("views_1h", "1h", [EventType.VIEW], "views"),
      count("clicks_15m", "15m", [EventType.CLICK], "clicks"),
      count("clicks_1h", "1h", [EventType.CLICK], "clicks"),
      count("clicks_24h", "24h", [EventType.CLICK], "clicks"),
      count("impressions_1h", "1h", [EventType.IMPRESSION], "impressions"),
      count("purchases_24h", "24h", [EventType.PURCHASE], "purchases"),
      ctr("ctr_1h", "1h", "the item's"),
      {
        name: "trending_score",
        type: "double",
        default: 0,
        description: "interactions decayed with a 1 h half-life, as of the read",
        aggregation: { kind: "decayed", halfLifeSeconds: TRENDING_HALF_LIFE_SECONDS, types: INTERACTIONS },
      },
      sinceLast,
    ],
  },
  {
    name: "request",
    source: "on_demand",
    entity: "request",
    features: [
      { name: "hour_of_day", type: "int64", default: "0", description: "local hour, 0-23, in the context's time zone (UTC when unset)" },
      { name: "hour_sin", type: "double", default: 0, description: "sin(2 pi local time of day / 24 h)" },
      { name: "hour_cos", type: "double", default: 1, description: "cos(2 pi local time of day / 24 h)" },
      { name: "day_of_week", type: "int64", default: "0", description: "local day of week, 0 = Monday ... 6 = Sunday" },
      { name: "is_weekend", type: "bool", default: false, description: "Saturday or Sunday, local time" },
      { name: "device_mobile", type: "bool", default: false, description: "the device is a phone" },
      { name: "device_desktop", type: "bool", default: false, description: "the device is a desktop" },
      { name: "device_tablet", type: "bool", default: false, description: "the device is a tablet" },
      { name: "platform", type: "string", default: "unknown", description: "ios, android, web, other or unknown" },
      { name: "location_country", type: "string", default: "", description: "ISO 3166-1 alpha-2 country of the context's location; empty when unknown" },
    ],
  },
];

/** Popular and trending lists maintained by the aggregator (the retrieval service reads them). */
export const popularLists = {
  /** Events counted in the lists. */
  types: INTERACTIONS,
  /** popular: count over the current hour bucket and the 23 before it. */
  bucketSeconds: 3600,
  buckets: 24,
  trendingHalfLifeSeconds: TRENDING_HALF_LIFE_SECONDS,
} as const;

const byName = new Map(views.map((view) => [view.name, view]));

export function findView(name: string): FeatureView | undefined {
  return byName.get(name);
}
