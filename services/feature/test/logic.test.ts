import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";
import { Device, EventType, FeatureValueSchema, Platform, RequestContextSchema } from "../../../gen/recsys/common/v1/common_pb.js";
import {
  decayedValue,
  eventOps,
  forwardDecayWeight,
  isLate,
  mergeStates,
  parseState,
  streamFeatures,
  type StreamEvent,
} from "../aggregation.js";
import { checkJson, decodeRow, fromFeatureValue, toFeatureValue } from "../codec.js";
import { partitionOf, stateKey } from "../keys.js";
import { isKnownTimeZone, requestFeatures } from "../on-demand.js";
import { views, type FeatureType, type StreamView } from "../registry.js";

const userStream = views.find((v) => v.name === "user_stream") as StreamView;
const itemStream = views.find((v) => v.name === "item_stream") as StreamView;

/** A hash as HGETALL returns it: field, value, field, value... */
const flat = (hash: Record<string, string>) => Object.entries(hash).flat();

/** The counters and latest time an entity's hash holds after these events (the hincr and "last" part of the apply script). */
function hashAfter(events: StreamEvent[], now: number): string[] {
  const hash: Record<string, string> = {};
  const key = stateKey(0, "user_stream", "u");
  for (const e of events) {
    for (const op of eventOps(e, 0, now).ops) {
      if (op.key !== key) continue;
      const [a, b] = op.args as [string, string];
      if (op.op === "hincr") hash[a] = String(Number(hash[a] ?? 0) + Number(b));
      if (op.op === "touch") hash.last = String(Math.max(Number(hash.last ?? -Infinity), Number(a)));
    }
  }
  return flat(hash);
}

const click = (ts: number, n = 0): StreamEvent => ({ id: `e${n}`, userId: "u", itemId: "i", type: EventType.CLICK, ts, category: "" });

describe("sliding windows", () => {
  it("counts an event in a window of W while it is at most W - W/12 old, and never once older than W", () => {
    for (let now = 1_700_000_000_000; now < 1_700_000_000_000 + 10_000; now += 777) {
      const features = (ageS: number) => streamFeatures(userStream, parseState(hashAfter([click(now - ageS * 1000)], now))!, now);
      expect(features(55).get("clicks_1m")).toBe("1");
      expect(features(60.001).get("clicks_1m")).toBe("0");
      expect(features(275).get("clicks_5m")).toBe("1");
      expect(features(301).get("clicks_5m")).toBe("0");
      expect(features(3_300).get("clicks_1h")).toBe("1");
      expect(features(3_601).get("clicks_1h")).toBe("0");
      expect(features(22 * 3600).get("clicks_24h")).toBe("1");
    }
  });

  it("falls back to 0 as time passes, with no write", () => {
    const t = 1_700_000_000_000;
    const state = parseState(hashAfter([click(t), click(t + 1, 1)], t))!;
    expect(streamFeatures(userStream, state, t + 1_000).get("clicks_1m")).toBe("2");
    expect(streamFeatures(userStream, state, t + 61_000).get("clicks_1m")).toBe("0");
    expect(streamFeatures(userStream, state, t + 61_000).get("clicks_5m")).toBe("2");
    expect(streamFeatures(userStream, state, t + 301_000).get("active_5m")).toBe(false);
  });

  it("gives late events (older than 24 h when aggregated) no operations at all", () => {
    const now = 1_700_000_000_000;
    expect(isLate(now - 86_400_001, now)).toBe(true);
    expect(eventOps(click(now - 86_400_001), 0, now)).toEqual({ ops: [], upkeep: [] });
    expect(eventOps(click(now - 86_399_000), 0, now).ops.length).toBeGreaterThan(0);
  });

  it("ends a session 30 minutes after its last event", () => {
    const t = 1_700_000_000_000;
    const state = parseState(flat({ last: String(t), s0: String(t - 60_000), s1: String(t), sn: "4" }))!;
    expect(streamFeatures(userStream, state, t + 29 * 60_000).get("session_events")).toBe("4");
    expect(streamFeatures(userStream, state, t + 31 * 60_000).get("session_events")).toBe("0");
  });
});

describe("forward decay", () => {
  it("halves a score every half-life, the same on either side of the daily landmark", () => {
    const halfLife = 3600;
    const t = Date.UTC(2024, 0, 1, 23, 30);
    const { day, weight } = forwardDecayWeight(t, halfLife);
    expect(decayedValue([[day, weight]], halfLife, t)).toBeCloseTo(1, 12);
    expect(decayedValue([[day, weight]], halfLife, t + 3_600_000)).toBeCloseTo(0.5, 12);
    const next = forwardDecayWeight(t + 3_600_000, halfLife);
    expect(next.day).toBe(day + 1);
    expect(decayedValue([[day, weight], [next.day, next.weight]], halfLife, t + 3_600_000)).toBeCloseTo(1.5, 12);
  });
});

describe("partial states over partitions", () => {
  it("adds counts, keeps the latest values and merges recent items by time", () => {
    const a = parseState(flat({ last: "100", "5000:3:1": "2", "lc:last_click_category": "books", "lc:last_click_category@": "90" }), ["x", "90", "y", "80"])!;
    const b = parseState(flat({ last: "120", "5000:3:1": "1", "5000:2:1": "4", "lc:last_click_category": "games", "lc:last_click_category@": "95" }), ["x", "70", "z", "110"])!;
    const merged = mergeStates([a, undefined, b])!;
    const bucket = 1_700_000_000_000 / 5_000;
    const counted = mergeStates([
      parseState(flat({ last: "1", [`5000:3:${bucket}`]: "2" })),
      parseState(flat({ last: "1", [`5000:3:${bucket}`]: "1", [`5000:2:${bucket}`]: "4" })),
    ])!;
    const at = streamFeatures(userStream, counted, 1_700_000_000_000);
    expect([at.get("clicks_1m"), at.get("events_1h"), at.get("clicks_1h")]).toEqual(["3", "0", "0"]);
    expect(merged.last).toBe(120);
    expect(merged.latest.get("last_click_category")?.value).toBe("games");
    expect([...merged.recent]).toEqual([["x", 90], ["y", 80], ["z", 110]]);
    expect(streamFeatures(userStream, merged, 120).get("recent_items")).toEqual(["z", "x", "y"]);
    expect(mergeStates([undefined, undefined])).toBeUndefined();
  });

  it("places an item by FNV-1a, the same in every process, spread over the partitions", () => {
    // FNV-1a 32-bit reference values: "a" = 0xe40c292c, "foobar" = 0xbf9cf968.
    expect(partitionOf("a", 1_000)).toBe(0xe40c292c % 1_000);
    expect(partitionOf("foobar", 2 ** 30)).toBe(0xbf9cf968 % 2 ** 30);
    expect(partitionOf("anything", 1)).toBe(0);
    const spread = new Set(Array.from({ length: 200 }, (_, i) => partitionOf(`i${i}`, 8)));
    expect(spread.size).toBe(8);
  });

  it("keeps the item view's trending score in decayed day fields", () => {
    const now = Date.UTC(2024, 0, 1, 12);
    const view = { ...click(now), type: EventType.VIEW };
    const ops = eventOps(view, 0, now).ops.filter((op) => op.key === stateKey(0, "item_stream", "i") && op.op === "hincrf");
    const hash = flat({ last: String(now), [ops[0]!.args[0]!]: ops[0]!.args[1]! });
    expect(streamFeatures(itemStream, parseState(hash)!, now).get("trending_score")).toBeCloseTo(1, 12);
  });
});

describe("typed values", () => {
  const samples: [FeatureType, unknown][] = [
    ["double", 0.25],
    ["int64", "9007199254740993"],
    ["string", "c07"],
    ["bool", true],
    ["float_list", [0.5, -1]],
    ["string_list", ["a", "b"]],
    ["double_map", { c00: 0.1 }],
  ];

  it("round-trips every type between JSON and the wire", () => {
    for (const [type, value] of samples) {
      const checked = checkJson(type, value);
      expect(checked).toEqual({ value });
      expect(fromFeatureValue(type, toFeatureValue(type, value as never))).toEqual({ value });
    }
  });

  it("refuses values of the wrong type or out of range", () => {
    expect(checkJson("double", Number.NaN)).toHaveProperty("error");
    expect(checkJson("double", "0.5")).toHaveProperty("error");
    expect(checkJson("int64", "9223372036854775808")).toHaveProperty("error");
    expect(checkJson("int64", 1.5)).toHaveProperty("error");
    expect(checkJson("int64", 42)).toEqual({ value: "42" });
    expect(checkJson("double_map", { a: "x" })).toHaveProperty("error");
    expect(checkJson("string_list", ["a", 1])).toHaveProperty("error");
    expect(fromFeatureValue("double", create(FeatureValueSchema, { kind: { case: "int64Value", value: 1n } }))).toEqual({
      error: "expected double (doubleValue), got int64Value",
    });
  });

  it("decodes a stored row against the view as declared now: unknown or retyped features are dropped", () => {
    const features = views.find((v) => v.name === "user_profile")!.features;
    const row = decodeRow(JSON.stringify({ t: 5, v: { user_ctr: 0.5, user_log_events: "text", removed: 1 } }), features);
    expect(row.eventTimeMs).toBe(5);
    expect([...row.values.keys()]).toEqual(["user_ctr"]);
  });
});

describe("request features", () => {
  const context = (init: Parameters<typeof create<typeof RequestContextSchema>>[1]) => create(RequestContextSchema, init);

  it("uses UTC and the server clock when the context says nothing", () => {
    const now = Date.UTC(2024, 2, 4, 6); // a Monday, 06:00
    const features = requestFeatures(context({}), now);
    expect(Object.fromEntries(features)).toMatchObject({
      hour_of_day: "6",
      day_of_week: "0",
      is_weekend: false,
      device_mobile: false,
      device_desktop: false,
      platform: "unknown",
      location_country: "",
    });
    expect(features.get("hour_cos")).toBeCloseTo(0, 12);
    expect(features.get("hour_sin")).toBeCloseTo(1, 12);
  });

  it("follows the time zone across daylight saving time", () => {
    const winter = context({ timestamp: timestampFromMs(Date.UTC(2024, 0, 15, 12)), timeZone: "America/New_York" });
    const summer = context({ timestamp: timestampFromMs(Date.UTC(2024, 6, 15, 12)), timeZone: "America/New_York" });
    expect(requestFeatures(winter, 0).get("hour_of_day")).toBe("7");
    expect(requestFeatures(summer, 0).get("hour_of_day")).toBe("8");
    expect(isKnownTimeZone("America/New_York")).toBe(true);
    expect(isKnownTimeZone("Nowhere/Special")).toBe(false);
  });

  it("one-hot encodes the device and names the platform", () => {
    const features = requestFeatures(context({ device: Device.DESKTOP, platform: Platform.WEB, location: "US" }), 0);
    expect(Object.fromEntries(features)).toMatchObject({ device_desktop: true, device_mobile: false, device_tablet: false, platform: "web", location_country: "US" });
  });
});
