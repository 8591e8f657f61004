// `npm run bench -- feature`: the feature service (its own process, in-process
// aggregator, real Redis) against raw ioredis.
//   - GetOnlineFeatures for 1 user + 200 items (Zipf 1.1 over 1,000 users and 10,000
//     items), 16 features per item and every user feature (26),
//     side by side with one raw ioredis pipeline reading the same keys; with the
//     hot-entity cache (default) and without.
//   - Ingest -> visible: 5,000 events/s offered through IngestEvents while probe
//     events to fresh users are polled through GetOnlineFeatures until they show.
//   - Row encoding: decoding 200 stored rows as JSON vs protobuf (the choice in codec.ts).
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Redis } from "ioredis";
import { EventType, FeatureValueSchema } from "../gen/recsys/common/v1/common_pb.js";
import { EntityType, FeatureRowSchema, FeatureService } from "../gen/recsys/feature/v1/feature_pb.js";
import { freePort, startProcess, type Started } from "../scripts/lib/processes.js";
import { startRedis } from "../test/support/redis.js";
import { createServiceClient } from "../services/kit/index.js";
import { recentKey, rowKey, stateKey } from "../services/feature/keys.js";
import { featureScripts } from "../services/feature/lua.js";
import { connectRedis, type RedisClient } from "../services/kit/redis.js";
import { measure, percentile, ratio, summarize, zipfSampler, type BenchSuite, type ScenarioResult } from "./harness.js";

const seconds = Number(process.env.BENCH_SECONDS ?? 8);
const concurrency = Number(process.env.FEATURE_BENCH_CONCURRENCY ?? 8);
const ingestRate = Number(process.env.FEATURE_INGEST_RATE ?? 5_000);
const USERS = Array.from({ length: 1_000 }, (_, i) => `u${String(i + 1).padStart(6, "0")}`);
const ITEMS = Array.from({ length: 10_000 }, (_, i) => `i${String(i + 1).padStart(6, "0")}`);
const CATEGORIES = Array.from({ length: 20 }, (_, i) => `c${String(i).padStart(2, "0")}`);
const TYPES = [EventType.IMPRESSION, EventType.IMPRESSION, EventType.IMPRESSION, EventType.VIEW, EventType.CLICK, EventType.ADD_TO_CART, EventType.PURCHASE];

/** Every user feature, and 16 per item: the 8 batch ones and 8 of the stream view. */
const FEATURE_REFS = [
  "user_profile",
  "user_stream",
  "item_profile",
  ...["events_15m", "events_1h", "events_24h", "views_1h", "clicks_1h", "ctr_1h", "trending_score", "seconds_since_last_event"].map((f) => `item_stream:${f}`),
];

interface ReadRequest {
  user: string;
  items: string[];
}

function readRequests(count: number): ReadRequest[] {
  const user = zipfSampler(USERS.length, 1.1, 7);
  const item = zipfSampler(ITEMS.length, 1.1, 11);
  return Array.from({ length: count }, () => {
    const items = new Set<string>();
    while (items.size < 200) items.add(ITEMS[item()]!);
    return { user: USERS[user()]!, items: [...items] };
  });
}

let eventSeq = 0;
function randomEvent(now: number, spreadMs: number) {
  const n = eventSeq++;
  const item = ITEMS[(n * 7_919) % ITEMS.length]!;
  return {
    eventId: `bench-${n}`,
    userId: USERS[(n * 104_729) % USERS.length]!,
    itemId: item,
    type: TYPES[n % TYPES.length]!,
    timestamp: timestampFromMs(now - ((n * 48_271) % Math.max(1, spreadMs))),
    category: CATEGORIES[Number(item.slice(1)) % CATEGORIES.length]!,
  };
}

async function startService(redisUrl: string, env: Record<string, string> = {}): Promise<{ address: string; proc: Started }> {
  const port = await freePort();
  const proc = await startProcess("node", ["--import", "tsx", "services/feature/server.ts"], {
    env: { REDIS_URL: redisUrl, GRPC_PORT: String(port), LOG_LEVEL: "info", ...env },
    waitFor: /redis reachable: serving/,
  });
  return { address: `127.0.0.1:${port}`, proc };
}

/** Profiles for every user and item, and a day of events through the service's own ingestion. */
async function seed(address: string, raw: Redis): Promise<void> {
  const client = createServiceClient(FeatureService, address);
  const now = Date.now();
  const double = (value: number) => create(FeatureValueSchema, { kind: { case: "doubleValue", value } });
  const rows = [
    ...USERS.map((id, i) => ({
      entityType: EntityType.USER,
      entityId: id,
      featureView: "user_profile",
      eventTime: timestampFromMs(now - 3_600_000),
      values: {
        user_log_events: double(Math.log1p(i)),
        user_ctr: double(0.05),
        category_affinity: create(FeatureValueSchema, { kind: { case: "doubleMap", value: { values: Object.fromEntries(CATEGORIES.slice(0, 8).map((c, k) => [c, 1 / (k + 2)])) } } }),
      },
    })),
    ...ITEMS.map((id, i) => ({
      entityType: EntityType.ITEM,
      entityId: id,
      featureView: "item_profile",
      eventTime: timestampFromMs(now - 3_600_000),
      values: { item_log_popularity: double(Math.log1p(i)), item_ctr: double(0.04), category: create(FeatureValueSchema, { kind: { case: "stringValue", value: CATEGORIES[i % CATEGORIES.length]! } }) },
    })),
  ];
  for (let i = 0; i < rows.length; i += 2_000) await client.writeFeatures({ rows: rows.slice(i, i + 2_000) });
  for (let i = 0; i < 60; i++) await client.ingestEvents({ events: Array.from({ length: 1_000 }, () => randomEvent(now, 86_000_000)) });
  // Wait until the aggregator has applied everything.
  for (;;) {
    const [fields] = (await raw.xinfo("GROUPS", "recsys:{p0}:events")) as unknown[][];
    const get = (name: string) => Number(fields![fields!.indexOf(name) + 1]);
    if (get("pending") === 0 && get("lag") === 0) return;
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** The same keys, read the way the service reads them: one MGET and one state script per view. */
function rawBatchedRead(raw: RedisClient, request: ReadRequest) {
  const pipeline = raw.pipeline();
  pipeline.mget(rowKey(0, "user_profile", request.user));
  pipeline.recsysReadStates(2, stateKey(0, "user_stream", request.user), recentKey(0, "user_stream", request.user), "2");
  pipeline.mget(request.items.map((item) => rowKey(0, "item_profile", item)));
  pipeline.recsysReadStates(request.items.length, ...request.items.map((item) => stateKey(0, "item_stream", item)), "1");
  return pipeline.exec();
}

/** The same keys, one command per key in one pipeline. */
function rawRead(raw: Redis, request: ReadRequest) {
  const pipeline = raw.pipeline();
  pipeline.get(rowKey(0, "user_profile", request.user));
  pipeline.hgetall(stateKey(0, "user_stream", request.user));
  pipeline.zrange(recentKey(0, "user_stream", request.user), 0, -1, "WITHSCORES");
  for (const item of request.items) {
    pipeline.get(rowKey(0, "item_profile", item));
    pipeline.hgetall(stateKey(0, "item_stream", item));
  }
  return pipeline.exec();
}

async function readScenarios(name: string, address: string, requests: ReadRequest[]): Promise<ScenarioResult> {
  const client = createServiceClient(FeatureService, address);
  const call = (i: number) => {
    const request = requests[i % requests.length]!;
    return client.getOnlineFeatures({ userIds: [request.user], itemIds: request.items, featureRefs: FEATURE_REFS });
  };
  const sample = await call(0);
  const features = Object.keys(sample.items[0]!.features).length;
  return measure(name, call, { durationMs: seconds * 1000, concurrency, warmupMs: 2_000, extra: { item_features: features, user_features: Object.keys(sample.users[0]!.features).length } });
}

/**
 * Offers `rate` events/s for `durationMs` in batches every 20 ms; every 200 ms one
 * batch carries a click by a fresh user, read through GetOnlineFeatures every 20 ms
 * until its clicks_1m shows (so the figure includes the hot-entity cache's staleness).
 */
async function ingestToVisible(address: string, rate: number, durationMs: number): Promise<ScenarioResult> {
  const client = createServiceClient(FeatureService, address);
  const latencies: number[] = [];
  const polls: Promise<void>[] = [];
  const ingests: Promise<void>[] = [];
  const ingestMs: number[] = [];
  let errors = 0;
  let sent = 0;
  const tickMs = 20;
  const perTick = Math.round((rate * tickMs) / 1000);
  const started = performance.now();
  let probe = 0;
  for (let tick = 0; performance.now() - started < durationMs; tick++) {
    const due = started + tick * tickMs;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    const now = Date.now();
    const events = Array.from({ length: perTick }, () => randomEvent(now, 60_000));
    let probeUser: string | undefined;
    if (tick % 10 === 0) {
      probeUser = `probe-${process.pid}-${probe++}`;
      events[0] = { ...events[0]!, userId: probeUser, type: EventType.CLICK, timestamp: timestampFromMs(now) };
    }
    const sentAt = performance.now();
    const ingest = client.ingestEvents({ events }).then(
      () => {
        sent += events.length;
        ingestMs.push(performance.now() - sentAt);
      },
      () => void errors++,
    );
    ingests.push(ingest);
    if (probeUser) {
      const user = probeUser;
      polls.push(
        (async () => {
          await ingest;
          const deadline = sentAt + 10_000;
          while (performance.now() < deadline) {
            const response = await client.getOnlineFeatures({ userIds: [user], featureRefs: ["user_stream:clicks_1m"] });
            if (response.users[0]!.features["user_stream:clicks_1m"]!.value?.kind.value === 1n) {
              latencies.push(performance.now() - sentAt);
              return;
            }
            await new Promise((r) => setTimeout(r, 20));
          }
          errors++;
        })(),
      );
    }
  }
  const sendingMs = performance.now() - started;
  await Promise.all([...ingests, ...polls]);
  const accepted = Math.round((sent / sendingMs) * 1000);
  const ingestSorted = ingestMs.sort((a, b) => a - b);
  const result = summarize(`ingest -> visible at ${rate} events/s`, latencies, sendingMs, errors, {
    offered_events_per_s: rate,
    accepted_events_per_s: accepted,
    probes: latencies.length,
    ingest_rpc_p50_ms: Math.round(percentile(ingestSorted, 50) * 10) / 10,
    ingest_rpc_p99_ms: Math.round(percentile(ingestSorted, 99) * 10) / 10,
  });
  // summarize's qps counts probes; the scenario's rate is the events accepted per second.
  return { ...result, qps: accepted };
}

/** Decoding 200 stored item rows, per format: what codec.ts chose JSON over. */
async function codecScenarios(): Promise<ScenarioResult[]> {
  const row = { t: Date.now(), v: { item_log_popularity: 5.123456789, item_ctr: 0.0345678912, category: "c07" } };
  const json = JSON.stringify(row);
  const proto = toBinary(
    FeatureRowSchema,
    create(FeatureRowSchema, {
      eventTime: timestampFromMs(row.t),
      values: {
        item_log_popularity: create(FeatureValueSchema, { kind: { case: "doubleValue", value: row.v.item_log_popularity } }),
        item_ctr: create(FeatureValueSchema, { kind: { case: "doubleValue", value: row.v.item_ctr } }),
        category: create(FeatureValueSchema, { kind: { case: "stringValue", value: row.v.category } }),
      },
    }),
  );
  const jsonBuffer = Buffer.from(json);
  const options = { durationMs: 2_000, concurrency: 1, extra: { bytes_json: json.length, bytes_protobuf: proto.length } };
  return [
    await measure("decode 200 rows: JSON", async () => {
      for (let i = 0; i < 200; i++) JSON.parse(jsonBuffer.toString());
    }, options),
    await measure("decode 200 rows: protobuf", async () => {
      for (let i = 0; i < 200; i++) fromBinary(FeatureRowSchema, proto);
    }, options),
  ];
}

const suite: BenchSuite = {
  name: "feature",
  async run() {
    const redis = await startRedis();
    const raw = new Redis(redis.url);
    const services: Started[] = [];
    try {
      const cached = await startService(redis.url);
      services.push(cached.proc);
      await seed(cached.address, raw);
      const requests = readRequests(2_000);

      const rawResult = await measure("raw ioredis pipeline: 1 user + 200 items", (i) => rawRead(raw, requests[i % requests.length]!), {
        durationMs: seconds * 1000,
        concurrency,
        warmupMs: 2_000,
        extra: { commands: 3 + 2 * 200 },
      });
      const batched = await connectRedis({ REDIS_URL: redis.url }, { commandTimeoutMs: 10_000, readyTimeoutMs: 5_000, scripts: featureScripts });
      const rawBatched = await measure("raw ioredis, the service's batched commands: 1 user + 200 items", (i) => rawBatchedRead(batched, requests[i % requests.length]!), {
        durationMs: seconds * 1000,
        concurrency,
        warmupMs: 1_000,
        extra: { commands: 4 },
      });
      batched.disconnect();
      const withCache = await readScenarios("GetOnlineFeatures 1 user + 200 items (hot-entity cache)", cached.address, requests);

      const uncached = await startService(redis.url, { CACHE_MAX_ENTITIES: "0", AGGREGATOR_IN_PROCESS: "false" });
      services.push(uncached.proc);
      const withoutCache = await readScenarios("GetOnlineFeatures 1 user + 200 items (cache off)", uncached.address, requests);
      await uncached.proc.stop();

      // Last, as it leaves the aggregator busy for a while.
      const visible = await ingestToVisible(cached.address, ingestRate, Math.max(10, seconds) * 1000);
      await cached.proc.stop();

      const codecs = await codecScenarios();
      const scenarios = [rawResult, rawBatched, withCache, withoutCache, visible, ...codecs];
      return {
        scenarios,
        ratios: [
          ratio("GetOnlineFeatures (cache) QPS / raw ioredis pipeline QPS", withCache.qps / rawResult.qps, ">= 0.7", withCache.qps / rawResult.qps >= 0.7),
          ratio("GetOnlineFeatures (cache off) QPS / raw ioredis pipeline QPS", withoutCache.qps / rawResult.qps, "informational", true),
          ratio("GetOnlineFeatures (cache off) QPS / raw batched commands QPS", withoutCache.qps / rawBatched.qps, "informational", true),
          ratio("ingest -> visible p99 (ms) at 5,000 events/s", visible.p99_ms, "< 1000", visible.p99_ms < 1_000 && visible.errors === 0 && visible.qps >= ingestRate * 0.95),
          ratio("row decode QPS: JSON / protobuf", codecs[0]!.qps / codecs[1]!.qps, "informational (> 1 keeps JSON)", true),
        ],
      };
    } finally {
      await Promise.all(services.map((s) => s.stop()));
      raw.disconnect();
      await redis.stop();
    }
  },
};
export default suite;
