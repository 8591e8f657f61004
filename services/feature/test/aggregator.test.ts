// Exactly-once under failure: the same events aggregated once without trouble, and
// once by aggregator processes that are killed mid-stream, restarted, and joined by
// another while a "dead" consumer holds entries it never acknowledges, must end with
// the same features.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Client } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EventType } from "../../../gen/recsys/common/v1/common_pb.js";
import { FeatureService } from "../../../gen/recsys/feature/v1/feature_pb.js";
import { startProcess, type Started } from "../../../scripts/lib/processes.js";
import { startTestRedis, type TestRedisTarget } from "../../../test/support/redis-cluster.js";
import { createServiceClient, type RunningServer } from "../../kit/index.js";
import { GROUP } from "../aggregator.js";
import { streamFeatures } from "../aggregation.js";
import { streamKey } from "../keys.js";
import { connectRedis, type RedisClient } from "../../kit/redis.js";
import { featureScripts } from "../lua.js";
import { views, type StreamView } from "../registry.js";
import { startFeatureService } from "../server.js";
import { OnlineStore } from "../store.js";
import { event, eventually, serving, type EventInit } from "./helpers.js";

const PARTITIONS = 2;
const USERS = Array.from({ length: 200 }, (_, i) => `agg-u${i}`);
const ITEMS = Array.from({ length: 300 }, (_, i) => `agg-i${i}`);
const CATEGORIES = ["c0", "c1", "c2", "c3", "c4"];
const TYPES = [EventType.IMPRESSION, EventType.VIEW, EventType.CLICK, EventType.ADD_TO_CART, EventType.PURCHASE];

/** Deterministic pseudo-random numbers (mulberry32). */
function random(seed: number) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function makeEvents(count: number, now: number): EventInit[] {
  const next = random(42);
  const pick = <T>(list: T[]) => list[Math.floor(next() * list.length)]!;
  return Array.from({ length: count }, (_, n) => {
    const item = pick(ITEMS);
    // Half the events carry their category; the others are resolved from the catalogue.
    const category = next() < 0.5 ? CATEGORIES[ITEMS.indexOf(item) % CATEGORIES.length]! : "";
    return event(`agg-e${n}`, pick(USERS), item, pick(TYPES), now, -Math.floor(next() * 3_000), category);
  });
}

interface Deployment {
  redis: TestRedisTarget;
  server: RunningServer;
  client: Client<typeof FeatureService>;
  store: RedisClient;
}

describe("aggregator exactly-once under crashes", () => {
  const dir = mkdtempSync(join(tmpdir(), "feature-agg-"));
  const catalog = join(dir, "items.jsonl");
  const processes: Started[] = [];
  let reference: Deployment;
  let crashing: Deployment;
  const now = Date.now();
  const events = makeEvents(12_000, now);
  const baseEnv = {
    LOG_LEVEL: "info",
    PARTITIONS: String(PARTITIONS),
    CATALOG_PATH: catalog,
    POPULAR_PUBLISH_INTERVAL_MS: "200",
    // A loaded machine's Redis (a 6-node cluster in the cluster project): a 1,000-event ingest script can take seconds.
    REDIS_COMMAND_TIMEOUT_MS: "5000",
  };

  async function deploy(inProcess: boolean): Promise<Deployment> {
    const redis = await startTestRedis();
    const server = await startFeatureService({ ...baseEnv, LOG_LEVEL: "silent", ...redis.env, AGGREGATOR_IN_PROCESS: String(inProcess), AGGREGATOR_WORKERS: "2" });
    const store = await connectRedis(redis.env, { commandTimeoutMs: 5_000, readyTimeoutMs: 5_000, scripts: featureScripts });
    await serving(server.port);
    return { redis, server, store, client: createServiceClient(FeatureService, `127.0.0.1:${server.port}`) };
  }

  async function ingestAll(client: Client<typeof FeatureService>) {
    for (let i = 0; i < events.length; i += 1_000) await client.ingestEvents({ events: events.slice(i, i + 1_000) });
  }

  function aggregator(consumer: string): Promise<Started> {
    return startProcess("node", ["--import", "tsx", "services/feature/aggregator.ts"], {
      env: {
        ...baseEnv,
        ...crashing.redis.env,
        AGGREGATOR_CONSUMER_NAME: consumer,
        AGGREGATOR_WORKERS: "2",
        AGGREGATOR_BATCH_SIZE: "50",
        AGGREGATOR_CLAIM_IDLE_MS: "500",
      },
      waitFor: /aggregator running/,
      // node --import tsx takes seconds to start, many on a crowded machine.
      timeoutMs: 120_000,
    }).then((started) => {
      processes.push(started);
      return started;
    });
  }

  async function group(redis: RedisClient, partition: number) {
    const reply = (await redis.xinfo("GROUPS", streamKey(partition))) as unknown[][];
    const fields = reply[0]!;
    const get = (name: string) => fields[fields.indexOf(name) + 1];
    return { read: Number(get("entries-read")), pending: Number(get("pending")), lag: Number(get("lag")) };
  }

  async function allApplied(redis: RedisClient) {
    for (let p = 0; p < PARTITIONS; p++) expect(await group(redis, p)).toMatchObject({ pending: 0, lag: 0 });
  }

  /** Every stream feature of every user and item, computed at one instant from the stored state. */
  async function features(deployment: Deployment, at: number) {
    const store = new OnlineStore(deployment.store, PARTITIONS, { maxEntities: 0, batchTtlMs: 1, streamTtlMs: 1, absentTtlMs: 1 });
    const out: Record<string, Record<string, unknown>> = {};
    for (const view of views.filter((v): v is StreamView => v.source === "stream")) {
      const ids = view.entity === "user" ? USERS : ITEMS;
      const states = await store.readStates(view, ids);
      states.forEach((state, i) => (out[`${view.name}:${ids[i]}`] = state ? Object.fromEntries(streamFeatures(view, state, at)) : {}));
    }
    return out;
  }

  beforeAll(async () => {
    writeFileSync(catalog, ITEMS.map((id, i) => JSON.stringify({ item_id: id, category: CATEGORIES[i % CATEGORIES.length], popularity: i, created_at: "2024-01-01T00:00:00Z" })).join("\n"));
    [reference, crashing] = await Promise.all([deploy(true), deploy(false)]);
  });

  afterAll(async () => {
    await Promise.all(processes.map((p) => p.stop("SIGKILL")));
    for (const d of [reference, crashing]) {
      d.store.disconnect();
      await d.server.shutdown();
      await d.redis.stop();
    }
    rmSync(dir, { recursive: true, force: true });
  });

  it("ends with exactly the features of an undisturbed run", async () => {
    await ingestAll(reference.client);
    await ingestAll(crashing.client);

    // A consumer that takes entries and dies without acknowledging them.
    const ghost = await crashing.store.xreadgroup("GROUP", GROUP, "ghost", "COUNT", 300, "STREAMS", streamKey(0), ">").catch(async () => {
      await crashing.store.xgroup("CREATE", streamKey(0), GROUP, "0", "MKSTREAM");
      return crashing.store.xreadgroup("GROUP", GROUP, "ghost", "COUNT", 300, "STREAMS", streamKey(0), ">");
    });
    expect(ghost).not.toBeNull();

    // Killed (SIGKILL) twice mid-stream; restarted under the same name, then joined by a second one.
    for (const threshold of [2_000, 4_500]) {
      const first = await aggregator("first");
      await eventually(async () => expect((await group(crashing.store, 1)).read).toBeGreaterThan(threshold), 20_000);
      await first.stop("SIGKILL");
    }
    expect((await group(crashing.store, 0)).pending + (await group(crashing.store, 1)).lag).toBeGreaterThan(0);
    await Promise.all([aggregator("first"), aggregator("second")]);
    await eventually(() => allApplied(crashing.store), 30_000);
    await eventually(() => allApplied(reference.store), 30_000);
    // The ghost's entries were taken over by one of the aggregator processes.
    expect(processes.map((p) => p.output()).join("")).toMatch(/reclaimed pending entries/);

    const at = Date.now();
    const [expected, actual] = await Promise.all([features(reference, at), features(crashing, at)]);
    let clicks = 0;
    for (const [key, values] of Object.entries(expected)) {
      for (const [name, value] of Object.entries(values)) {
        if (typeof value === "number") expect(actual[key]![name], `${key} ${name}`).toBeCloseTo(value, 9);
        else expect(actual[key]![name], `${key} ${name}`).toEqual(value);
      }
      if (key.startsWith("user_stream:")) clicks += Number(values.clicks_1h ?? 0);
    }
    expect(Object.keys(actual)).toEqual(Object.keys(expected));
    // And the reference itself counted every click once.
    expect(clicks).toBe(events.filter((e) => e.type === EventType.CLICK).length);

    // The popular lists are published from the live sets every POPULAR_PUBLISH_INTERVAL_MS,
    // so a first read can predate the publish that follows the last applied event.
    const popular = (d: typeof reference) => d.store.zrevrange("recsys:popular:all", 0, -1, "WITHSCORES");
    await eventually(async () => {
      const [expectedPopular, actualPopular] = await Promise.all([popular(reference), popular(crashing)]);
      expect(expectedPopular.length).toBeGreaterThan(0);
      expect(actualPopular).toEqual(expectedPopular);
    }, 20_000);
  }, 240_000); // 24,000 events through two deployments and three aggregator starts: a minute alone, several on a crowded machine
});
