import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Device, EventType, FeatureValueSchema, Platform } from "../../../gen/recsys/common/v1/common_pb.js";
import { ErrorInfoSchema } from "../../../gen/google/rpc/error_details_pb.js";
import { EntityType, FeatureService, FeatureStatus } from "../../../gen/recsys/feature/v1/feature_pb.js";
import { startTestRedis, type TestRedisTarget } from "../../../test/support/redis-cluster.js";
import type { RedisClient } from "../../kit/redis.js";
import { createServiceClient, type RunningServer } from "../../kit/index.js";
import { startFeatureService } from "../server.js";
import { event, eventually, healthProbe, metric, readOne, scrape, serving, type EventInit } from "./helpers.js";

const DAY = 86_400_000;
const double = (value: number) => create(FeatureValueSchema, { kind: { case: "doubleValue", value } });

async function failure(call: Promise<unknown>): Promise<ConnectError> {
  const err = await call.then(
    () => undefined,
    (e: unknown) => ConnectError.from(e),
  );
  if (!err) throw new Error("expected the call to fail");
  return err;
}

describe("feature service on a real Redis", () => {
  let redis: TestRedisTarget;
  let server: RunningServer;
  let client: Client<typeof FeatureService>;
  let raw: RedisClient;

  beforeAll(async () => {
    redis = await startTestRedis();
    server = await startFeatureService({
      ...redis.env,
      GRPC_PORT: "0",
      METRICS_PORT: "0",
      LOG_LEVEL: "silent",
      POPULAR_PUBLISH_INTERVAL_MS: "100",
    });
    client = createServiceClient(FeatureService, `127.0.0.1:${server.port}`);
    raw = redis.client();
    raw.on("error", () => undefined); // the last test stops Redis under it
    await serving(server.port);
  });

  afterAll(async () => {
    raw.disconnect();
    await server.shutdown();
    await redis.stop();
  });

  it("lists the registry's views, their features, types and defaults", async () => {
    const { views } = await client.listFeatureViews({});
    const byName = Object.fromEntries(views.map((v) => [v.name, v]));
    expect(Object.keys(byName)).toEqual(expect.arrayContaining(["user_profile", "item_profile", "user_stream", "item_stream", "request"]));
    expect(byName.user_profile).toMatchObject({ entityType: EntityType.USER, source: "batch", ttlSeconds: 604_800n });
    expect(byName.item_stream!.features.map((f) => f.name)).toEqual(
      expect.arrayContaining(["events_15m", "events_1h", "events_24h", "clicks_1h", "trending_score"]),
    );
    const affinity = byName.user_profile!.features.find((f) => f.name === "category_affinity")!;
    expect(affinity.type).toBe("double_map");
    expect(affinity.defaultValue?.kind.case).toBe("doubleMap");
  });

  it("round-trips batch rows: PRESENT with their age, DEFAULT where nothing is stored", async () => {
    const eventTime = Date.now() - 90_000;
    const written = await client.writeFeatures({
      rows: [
        {
          entityType: EntityType.USER,
          entityId: "rt-user",
          featureView: "user_profile",
          eventTime: timestampFromMs(eventTime),
          values: {
            user_ctr: double(0.125),
            category_affinity: create(FeatureValueSchema, { kind: { case: "doubleMap", value: { values: { c01: 0.75, c02: 0.25 } } } }),
            user_clicks: create(FeatureValueSchema, { kind: { case: "int64Value", value: 12n } }),
            // Unset: null, nothing stored.
            last_click_time: create(FeatureValueSchema),
          },
        },
        {
          entityType: EntityType.ITEM,
          entityId: "rt-item",
          featureView: "item_profile",
          eventTime: timestampFromMs(eventTime),
          values: { category: create(FeatureValueSchema, { kind: { case: "stringValue", value: "c07" } }), item_ctr: double(0.5) },
        },
      ],
    });
    expect(written).toMatchObject({ rowsWritten: 2, rowsSkippedStale: 0 });

    const user = await readOne(client, "user", "rt-user", ["user_profile"]);
    expect(user.values).toMatchObject({
      "user_profile:user_ctr": 0.125,
      "user_profile:category_affinity": { c01: 0.75, c02: 0.25 },
      "user_profile:user_clicks": 12,
      "user_profile:user_log_events": 0,
      "user_profile:last_click_time": "",
    });
    expect(user.results["user_profile:last_click_time"]!.status).toBe(FeatureStatus.DEFAULT);
    expect(user.results["user_profile:user_ctr"]!.status).toBe(FeatureStatus.PRESENT);
    expect(user.results["user_profile:user_ctr"]!.ageSeconds).toBeGreaterThanOrEqual(90);
    expect(user.results["user_profile:user_ctr"]!.ageSeconds).toBeLessThan(120);
    expect(user.results["user_profile:user_log_events"]).toMatchObject({ status: FeatureStatus.DEFAULT, ageSeconds: 0 });

    const item = await readOne(client, "item", "rt-item", ["item_profile:category"]);
    expect(item.values).toEqual({ "item_profile:category": "c07" });

    const missing = await readOne(client, "item", "never-written", ["item_profile", "item_stream:events_1h"]);
    for (const result of Object.values(missing.results)) expect(result).toMatchObject({ status: FeatureStatus.DEFAULT, ageSeconds: 0 });
    expect(missing.values["item_stream:events_1h"]).toBe(0);
  });

  it("serves the default as EXPIRED past the TTL, and Redis deletes the row a day later", async () => {
    const write = (entityId: string, eventTime: number) =>
      client.writeFeatures({
        rows: [{ entityType: EntityType.USER, entityId, featureView: "user_profile", eventTime: timestampFromMs(eventTime), values: { user_ctr: double(0.9) } }],
      });
    await write("expired-user", Date.now() - 7.5 * DAY);
    const { results } = await readOne(client, "user", "expired-user", ["user_profile:user_ctr"]);
    expect(results["user_profile:user_ctr"]!.status).toBe(FeatureStatus.EXPIRED);
    expect(results["user_profile:user_ctr"]!.value?.kind).toEqual({ case: "doubleValue", value: 0 });
    expect(results["user_profile:user_ctr"]!.ageSeconds).toBeGreaterThan(7.5 * 86_400 - 60);
    // Deleted at event time + 7 d TTL + 1 d grace: half a day from now.
    const ttlMs = await raw.pttl("recsys:{p0}:fv:user_profile:expired-user");
    expect(Math.abs(ttlMs - 0.5 * DAY)).toBeLessThan(60_000);

    await write("gone-user", Date.now() - 9 * DAY);
    expect(await raw.exists("recsys:{p0}:fv:user_profile:gone-user")).toBe(0);
    expect((await readOne(client, "user", "gone-user", ["user_profile:user_ctr"])).results["user_profile:user_ctr"]!.status).toBe(FeatureStatus.DEFAULT);

    await write("fresh-user", Date.now());
    expect(Math.abs((await raw.pttl("recsys:{p0}:fv:user_profile:fresh-user")) - 8 * DAY)).toBeLessThan(60_000);
  });

  it("keeps the newer row when an older one arrives", async () => {
    const row = (ctr: number, at: number) => ({
      entityType: EntityType.USER,
      entityId: "stale-user",
      featureView: "user_profile",
      eventTime: timestampFromMs(at),
      values: { user_ctr: double(ctr) },
    });
    const now = Date.now();
    expect(await client.writeFeatures({ rows: [row(0.2, now - 1_000)] })).toMatchObject({ rowsWritten: 1, rowsSkippedStale: 0 });
    expect(await client.writeFeatures({ rows: [row(0.1, now - 60_000)] })).toMatchObject({ rowsWritten: 0, rowsSkippedStale: 1 });
    expect(await client.writeFeatures({ rows: [row(0.2, now - 1_000)] })).toMatchObject({ rowsWritten: 1 });
    expect((await readOne(client, "user", "stale-user", ["user_profile:user_ctr"])).values["user_profile:user_ctr"]).toBe(0.2);
  });

  it("rejects a write with one bad row, naming it, and writes none of the rows", async () => {
    const good = { entityType: EntityType.USER, entityId: "bad-batch-user", featureView: "user_profile", eventTime: timestampFromMs(Date.now()), values: { user_ctr: double(0.3) } };
    const wrongType = { ...good, entityId: "other", values: { user_ctr: create(FeatureValueSchema, { kind: { case: "stringValue", value: "high" } }) } };
    const err = await failure(client.writeFeatures({ rows: [good, wrongType] }));
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.findDetails(ErrorInfoSchema)[0]?.metadata.field).toBe('rows[1].values["user_ctr"]');
    expect(await raw.exists("recsys:{p0}:fv:user_profile:bad-batch-user")).toBe(0);

    const streamView = await failure(client.writeFeatures({ rows: [{ ...good, featureView: "user_stream", values: { clicks_1m: double(1) } }] }));
    expect(streamView.rawMessage).toMatch(/rows\[0\]\.feature_view: "user_stream" is a stream view/);
    const wrongEntity = await failure(client.writeFeatures({ rows: [{ ...good, entityType: EntityType.ITEM }] }));
    expect(wrongEntity.rawMessage).toMatch(/rows\[0\]\.entity_type/);
    const unknownRef = await failure(client.getOnlineFeatures({ userIds: ["u"], featureRefs: ["user_profile", "user_profile:nope"] }));
    expect(unknownRef.code).toBe(Code.InvalidArgument);
    expect(unknownRef.rawMessage).toMatch(/feature_refs\[1\]: view "user_profile" has no feature "nope"/);
  });

  it("turns events into exact windowed counts, in any arrival order; late events count in nothing", async () => {
    const now = Date.now();
    const u = "win-user";
    const events: EventInit[] = [
      event("w-future", u, "i-f", EventType.CLICK, now, 60, "music"),
      event("w-30s", u, "i-a", EventType.CLICK, now, -30, "books"),
      event("w-2m", u, "i-b", EventType.CLICK, now, -120, "games"),
      event("w-30m", u, "i-c", EventType.CLICK, now, -1_800),
      event("w-5h", u, "i-d", EventType.CLICK, now, -5 * 3600),
      event("w-25h", u, "i-e", EventType.CLICK, now, -25 * 3600, "late"),
      ...[1, 2, 3, 4].map((n) => event(`w-imp-${n}`, u, "i-a", EventType.IMPRESSION, now, -10)),
    ];
    // Newest first, split over two batches: arrival order must not matter.
    await client.ingestEvents({ events: events.slice(0, 5) });
    await client.ingestEvents({ events: events.slice(5) });
    const { values } = await eventually(async () => {
      const read = await readOne(client, "user", u, ["user_stream"]);
      expect(read.values["user_stream:impressions_5m"]).toBe(4);
      return read;
    });
    expect(values).toMatchObject({
      "user_stream:clicks_1m": 2,
      "user_stream:clicks_5m": 3,
      "user_stream:clicks_1h": 4,
      "user_stream:clicks_24h": 5,
      "user_stream:events_1h": 8,
      "user_stream:views_5m": 0,
      "user_stream:ctr_5m": 0.75,
      "user_stream:ctr_1h": 1,
      "user_stream:active_5m": true,
      "user_stream:seconds_since_last_event": 0,
      "user_stream:last_click_category": "music",
      "user_stream:recent_items": ["i-f", "i-a", "i-b", "i-c", "i-d"],
    });
    const item = await readOne(client, "item", "i-a", ["item_stream"]);
    expect(item.values).toMatchObject({ "item_stream:events_15m": 5, "item_stream:clicks_1h": 1, "item_stream:impressions_1h": 4, "item_stream:ctr_1h": 0.25 });
    expect(item.values["item_stream:trending_score"]).toBeCloseTo(1, 1);
    expect((await readOne(client, "item", "i-e", ["item_stream:events_24h"])).results["item_stream:events_24h"]!.status).toBe(FeatureStatus.DEFAULT);
  });

  it("counts the events of the current session, a session ending after 30 minutes without events", async () => {
    const now = Date.now();
    const u = "session-user";
    await client.ingestEvents({
      events: [
        event("s-1", u, "i1", EventType.VIEW, now, -3 * 3600),
        event("s-2", u, "i2", EventType.VIEW, now, -40 * 60),
        event("s-3", u, "i3", EventType.VIEW, now, -20 * 60),
        event("s-4", u, "i4", EventType.CLICK, now, -5 * 60),
      ],
    });
    await eventually(async () => expect((await readOne(client, "user", u, ["user_stream:session_events"])).values["user_stream:session_events"]).toBe(3));
    // Out of order, 10 minutes before the session's first event: it belongs to it.
    await client.ingestEvents({ events: [event("s-5", u, "i5", EventType.VIEW, now, -50 * 60)] });
    await eventually(async () => expect((await readOne(client, "user", u, ["user_stream:session_events"])).values["user_stream:session_events"]).toBe(4));
  });

  it("ignores duplicate event ids, within a batch and across batches", async () => {
    const now = Date.now();
    const batch = [event("d-1", "dup-user", "d-item", EventType.CLICK, now, -1), event("d-2", "dup-user", "d-item", EventType.CLICK, now, -1), event("d-1", "dup-user", "d-item", EventType.CLICK, now, -1)];
    expect(await client.ingestEvents({ events: batch })).toMatchObject({ accepted: 2, duplicates: 1 });
    expect(await client.ingestEvents({ events: batch })).toMatchObject({ accepted: 0, duplicates: 3 });
    await eventually(async () => expect((await readOne(client, "user", "dup-user", ["user_stream:clicks_1m"])).values["user_stream:clicks_1m"]).toBe(2));
    await new Promise((r) => setTimeout(r, 400));
    expect((await readOne(client, "user", "dup-user", ["user_stream:clicks_1m"])).values["user_stream:clicks_1m"]).toBe(2);
  });

  it("rejects a batch with one bad event, naming its index and field, and applies none of it", async () => {
    const now = Date.now();
    const lengthBefore = await raw.xlen("recsys:{p0}:events");
    const good = (n: number) => event(`bad-${n}`, "reject-user", "reject-item", EventType.CLICK, now, -1);
    const cases: [EventInit, string][] = [
      [event("bad-future", "reject-user", "reject-item", EventType.CLICK, now, 3_600), "events[3].timestamp"],
      [{ ...good(9), userId: "" }, "events[3].user_id"],
      [{ ...good(9), type: EventType.UNSPECIFIED }, "events[3].type"],
      [{ ...good(9), category: "all" }, "events[3].category"],
      [{ ...good(9), category: "has space" }, "events[3].category"],
    ];
    for (const [bad, field] of cases) {
      const err = await failure(client.ingestEvents({ events: [good(0), good(1), good(2), bad, good(4)] }));
      expect(err.code).toBe(Code.InvalidArgument);
      expect(err.findDetails(ErrorInfoSchema)[0]?.metadata.field).toBe(field);
    }
    expect(await raw.xlen("recsys:{p0}:events")).toBe(lengthBefore);
    expect(await raw.exists("recsys:{p0}:seen:bad-0")).toBe(0);
    // The same good events are accepted afterwards: a rejected batch marked none as seen.
    expect(await client.ingestEvents({ events: [good(0), good(1)] })).toMatchObject({ accepted: 2, duplicates: 0 });
  });

  it("ingests a client stream of batches; a bad batch ends the stream and the batches before it stay", async () => {
    const now = Date.now();
    const batches = (bad: boolean) =>
      (async function* () {
        yield { events: [event("st-1", "stream-user", "st-item", EventType.VIEW, now, -1), event("st-2", "stream-user", "st-item", EventType.VIEW, now, -1)] };
        yield { events: [event("st-3", "stream-user", "st-item", EventType.VIEW, now, -1), event("st-1", "stream-user", "st-item", EventType.VIEW, now, -1)] };
        if (bad) yield { events: [event("st-4", "stream-user", "st-item", EventType.VIEW, now, 3_600)] };
      })();
    expect(await client.ingestEventStream(batches(false))).toMatchObject({ accepted: 3, duplicates: 1, batches: 2 });
    const err = await failure(client.ingestEventStream(batches(true)));
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.rawMessage).toMatch(/events\[0\]\.timestamp: .*in batch 2/);
    await eventually(async () => expect((await readOne(client, "user", "stream-user", ["user_stream:views_5m"])).values["user_stream:views_5m"]).toBe(3));
  });

  it("maintains popular and trending lists per category and overall, from interactions only", async () => {
    const now = Date.now();
    await client.ingestEvents({
      events: [
        ...[1, 2, 3].map((n) => event(`p-a${n}`, `pop-u${n}`, "pop-a", EventType.CLICK, now, -1, "pop-cat")),
        event("p-b1", "pop-u1", "pop-b", EventType.VIEW, now, -1, "pop-cat"),
        ...[1, 2].map((n) => event(`p-c${n}`, `pop-u${n}`, "pop-c", EventType.PURCHASE, now, -1, "pop-other")),
        ...[1, 2, 3, 4, 5].map((n) => event(`p-d${n}`, `pop-u${n}`, "pop-d", EventType.IMPRESSION, now, -1, "pop-cat")),
      ],
    });
    await eventually(async () => {
      expect(await raw.zrevrange("recsys:popular:pop-cat", 0, -1, "WITHSCORES")).toEqual(["pop-a", "3", "pop-b", "1"]);
      expect(await raw.zrevrange("recsys:popular:pop-other", 0, -1)).toEqual(["pop-c"]);
      expect(Number(await raw.zscore("recsys:popular:all", "pop-a"))).toBe(3);
      expect(Number(await raw.zscore("recsys:popular:all", "pop-c"))).toBe(2);
      expect(await raw.zscore("recsys:popular:all", "pop-d")).toBeNull();
      const trending = await raw.zrevrange("recsys:trending:pop-cat", 0, -1, "WITHSCORES");
      expect(trending.filter((_, i) => i % 2 === 0)).toEqual(["pop-a", "pop-b"]);
      expect(Number(trending[1])).toBeCloseTo(3, 1);
    });
  });

  it("counts popular items over the last 24 hour buckets: an hour that left the window is subtracted", async () => {
    const HOUR = 3_600_000;
    // Not within seconds of an hour boundary, so "the current hour" stays put during the test.
    while (HOUR - (Date.now() % HOUR) < 10_000) await new Promise((r) => setTimeout(r, 1_000));
    const firstHourIn = Math.floor(Date.now() / HOUR) - 23;
    const at = (ts: number, n: number, item: string) =>
      ({ ...event(`win-pop-${item}-${n}`, `wp-u${n}`, item, EventType.CLICK, 0, 0, "win-pop"), timestamp: timestampFromMs(ts) }) as EventInit;
    await client.ingestEvents({
      events: [
        // The first millisecond of the oldest hour in the window: counts.
        at(firstHourIn * HOUR, 1, "in-window"),
        // The last millisecond of the hour before: less than 24 h old, yet its bucket left the window.
        at(firstHourIn * HOUR - 1, 1, "out-of-window"),
        at(firstHourIn * HOUR - 1, 2, "out-of-window"),
      ],
    });
    await eventually(async () => {
      expect(await raw.zrevrange("recsys:popular:win-pop", 0, -1, "WITHSCORES")).toEqual(["in-window", "1"]);
      expect(await raw.exists(`recsys:{p0}:popular-hour:win-pop:${firstHourIn - 1}`)).toBe(0);
    });
  });

  it("computes request features from the context, and refuses an unknown time zone", async () => {
    // Saturday 2024-06-01 23:30 UTC is Sunday 01:30 in Paris (UTC+2).
    const at = Date.UTC(2024, 5, 1, 23, 30);
    const response = await client.getOnlineFeatures({
      featureRefs: ["request"],
      context: { device: Device.TABLET, platform: Platform.IOS, location: "FR-IDF", timestamp: timestampFromMs(at), timeZone: "Europe/Paris" },
    });
    const features = Object.fromEntries(Object.entries(response.requestFeatures).map(([k, v]) => [k, v.value?.kind.value]));
    expect(features).toMatchObject({
      hour_of_day: 1n,
      day_of_week: 6n,
      is_weekend: true,
      device_tablet: true,
      device_mobile: false,
      platform: "ios",
      location_country: "FR",
    });
    expect(features.hour_sin).toBeCloseTo(Math.sin((2 * Math.PI * 1.5) / 24), 9);
    expect(Object.values(response.requestFeatures).every((r) => r.status === FeatureStatus.ON_DEMAND)).toBe(true);
    const err = await failure(client.getOnlineFeatures({ featureRefs: ["request"], context: { timeZone: "Mars/Olympus" } }));
    expect(err.rawMessage).toMatch(/context\.time_zone/);
  });

  it("exports ingest, freshness, cache and stream metrics", async () => {
    const now = Date.now();
    const before = await scrape(server.metricsPort!);
    await client.ingestEvents({ events: [event("m-1", "metric-user", "metric-item", EventType.CLICK, now, -1), event("m-1", "metric-user", "metric-item", EventType.CLICK, now, -1)] });
    await eventually(async () => expect((await readOne(client, "user", "metric-user", ["user_stream:clicks_1m"])).values["user_stream:clicks_1m"]).toBe(1));
    await readOne(client, "item", "metric-item", ["item_profile"]);
    await readOne(client, "item", "metric-item", ["item_profile"]);
    const after = await scrape(server.metricsPort!);
    const delta = (name: string, labels: Record<string, string> = {}) => metric(after, name, labels) - metric(before, name, labels);
    expect(delta("recsys_feature_events_ingested_total", { result: "accepted" })).toBe(1);
    expect(delta("recsys_feature_events_ingested_total", { result: "duplicate" })).toBe(1);
    expect(delta("recsys_feature_freshness_seconds_count")).toBeGreaterThanOrEqual(1);
    expect(delta("recsys_feature_cache_lookups_total", { source: "batch", result: "hit" })).toBeGreaterThanOrEqual(1);
    expect(delta("recsys_feature_cache_lookups_total", { source: "stream", result: "miss" })).toBeGreaterThanOrEqual(1);
    expect(delta("recsys_feature_read_seconds_count")).toBeGreaterThanOrEqual(3);
    expect(after).toMatch(/recsys_feature_redis_up 1/);
    // The aggregator has caught up: nothing pending or undelivered, as the housekeeping loop reports it.
    await eventually(async () => {
      const now = await scrape(server.metricsPort!);
      expect(now).toMatch(/recsys_feature_stream_pending\{partition="0"\} 0\n/);
      expect(now).toMatch(/recsys_feature_stream_lag\{partition="0"\} 0\n/);
      // Trimming is by whole stream nodes: the latest entries stay.
      expect(metric(now, "recsys_feature_stream_length", { partition: "0" })).toBeGreaterThan(0);
    });
  });

  // Last: it takes Redis away.
  it("answers UNAVAILABLE at once and turns NOT_SERVING when Redis goes away, then recovers", async () => {
    await redis.kill();
    // A generous deadline: a store that waited for Redis would end in DEADLINE_EXCEEDED.
    const err = await failure(client.getOnlineFeatures({ itemIds: ["uncached-item"], featureRefs: ["item_profile"] }, { timeoutMs: 15_000 }));
    expect(err.code).toBe(Code.Unavailable);
    expect(err.findDetails(ErrorInfoSchema)[0]?.reason).toBe("FEATURE_STORE_UNAVAILABLE");
    const ingest = await failure(client.ingestEvents({ events: [event("down-1", "u", "i", EventType.CLICK, Date.now(), 0)] }));
    expect(ingest.code).toBe(Code.Unavailable);
    expect((await healthProbe(server.port)).output).toMatch(/NOT_SERVING/);

    await redis.restart();
    await serving(server.port);
    expect((await client.getOnlineFeatures({ itemIds: ["uncached-item"], featureRefs: ["item_profile"] })).items).toHaveLength(1);
  });
});
