// The stream aggregator: consumer-group workers that turn the event stream into
// stream features and the popular/trending lists. Runs inside the feature server by
// default, or on its own: `npx tsx services/feature/aggregator.ts` (same env).
import { once } from "node:events";
import { setTimeout as sleep } from "node:timers/promises";
import { pathToFileURL } from "node:url";
import { LRUCache } from "lru-cache";
import { createLogger, startMetricsServer, type Logger } from "../kit/index.js";
import { UPKEEP_EVERY_MS, eventOps, isLate, encodeOps, type Op, type StreamEvent } from "./aggregation.js";
import { loadCategories } from "./catalog.js";
import { loadFeatureConfig, type FeatureConfig } from "./config.js";
import { decodeEvent } from "./ingest.js";
import { publishLockKey, streamKey } from "./keys.js";
import { eventsApplied, freshnessSeconds, streamLag, streamLength, streamPending } from "./metrics.js";
import { publishLists } from "./popular.js";
import { closeRedis, createRedis, type RedisClient } from "../kit/redis.js";
import { featureScripts } from "./lua.js";

/** The consumer group every aggregator worker joins. */
export const GROUP = "aggregator";

type Entry = [id: string, fields: string[] | null];
type StreamReply = [key: string, entries: Entry[]][] | null;

export interface AggregatorOptions {
  config: FeatureConfig;
  /** Item id -> category, for events sent without one. */
  categories: Map<string, string>;
  log: Logger;
}

/** A flat [name, value, ...] reply (XINFO) as an object. */
function record(reply: unknown[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (let i = 0; i + 1 < reply.length; i += 2) out[String(reply[i])] = reply[i + 1];
  return out;
}

/** Upkeep ops that do the same thing whatever the batch: an op on a key (a member, for sadd). */
const upkeepKey = (op: Op) => `${op.op}\0${op.key}\0${op.op === "sadd" ? op.args[0] : ""}`;

export class Aggregator {
  private readonly stop$ = new AbortController();
  private readonly loops: Promise<void>[] = [];
  /**
   * Upkeep this process ran lately. Expiries (a day ahead) and tidying (at most once a
   * minute) need not run per batch: skipping them saves 3-4 Redis calls per event.
   */
  private readonly recentUpkeep = new LRUCache<string, true>({ max: 200_000, ttl: UPKEEP_EVERY_MS });

  constructor(private readonly options: AggregatorOptions) {}

  start(): void {
    const { AGGREGATOR_WORKERS: workers, PARTITIONS: partitions } = this.options.config;
    for (let w = 0; w < workers; w++) {
      // Every partition gets a worker; extra workers share partitions (the group splits the entries).
      const owned = workers >= partitions ? [w % partitions] : Array.from({ length: partitions }, (_, p) => p).filter((p) => p % workers === w);
      this.loops.push(this.work(w, owned));
    }
    this.loops.push(this.housekeep());
  }

  /** Finishes the batch in hand, then stops every loop. */
  async stop(): Promise<void> {
    this.stop$.abort();
    await Promise.all(this.loops);
  }

  private get stopping(): boolean {
    return this.stop$.signal.aborted;
  }

  private async pause(ms: number): Promise<void> {
    await sleep(ms, undefined, { signal: this.stop$.signal }).catch(() => undefined);
  }

  /**
   * One worker: after a start or a failure, first the entries it had read and not
   * applied (its own pending list), then new entries, and every so often entries
   * another worker left pending for longer than AGGREGATOR_CLAIM_IDLE_MS.
   */
  private async work(index: number, partitions: number[]): Promise<void> {
    const { config, log } = this.options;
    // Blocking reads need a connection of their own, and a timeout longer than the block.
    const redis = createRedis(config, { commandTimeoutMs: config.AGGREGATOR_BLOCK_MS + config.REDIS_COMMAND_TIMEOUT_MS + 1_000, name: `aggregator-w${index}`, scripts: featureScripts });
    const consumer = `${config.AGGREGATOR_CONSUMER_NAME}-w${index}`;
    const blockMs = Math.max(1, Math.floor(config.AGGREGATOR_BLOCK_MS / partitions.length));
    let recovered = false;
    let failures = 0;
    let nextClaimAt = 0;
    while (!this.stopping) {
      try {
        // Offline, commands fail at once (no offline queue): wait for the connection instead of spinning.
        if (redis.status !== "ready") await once(redis, "ready", { signal: this.stop$.signal });
        if (!recovered) {
          for (const p of partitions) {
            await this.ensureGroup(redis, p);
            await this.drainOwnPending(redis, p, consumer);
          }
          recovered = true;
        }
        if (Date.now() >= nextClaimAt) {
          for (const p of partitions) await this.reclaim(redis, p, consumer);
          nextClaimAt = Date.now() + config.AGGREGATOR_CLAIM_IDLE_MS / 2;
        }
        for (const p of partitions) {
          const reply = (await redis.xreadgroup(
            "GROUP", GROUP, consumer, "COUNT", config.AGGREGATOR_BATCH_SIZE, "BLOCK", blockMs, "STREAMS", streamKey(p), ">",
          )) as StreamReply;
          const entries = reply?.[0]?.[1];
          if (entries?.length) await this.apply(redis, p, entries);
        }
        if (failures > 0) log.info({ worker: index }, "aggregator worker recovered");
        failures = 0;
      } catch (err) {
        if (this.stopping) break;
        failures++;
        recovered = false;
        if (failures === 1) log.warn({ err, worker: index }, "aggregator worker failing; retrying");
        await this.pause(Math.min(100 * failures, 2_000));
      }
    }
    await closeRedis(redis, { immediately: true });
  }

  private async ensureGroup(redis: RedisClient, partition: number): Promise<void> {
    try {
      // From the start of the stream: events ingested before any aggregator ran count too.
      await redis.xgroup("CREATE", streamKey(partition), GROUP, "0", "MKSTREAM");
    } catch (err) {
      if (!String(err).includes("BUSYGROUP")) throw err;
    }
  }

  private async drainOwnPending(redis: RedisClient, partition: number, consumer: string): Promise<void> {
    let after = "0";
    for (;;) {
      const reply = (await redis.xreadgroup(
        "GROUP", GROUP, consumer, "COUNT", this.options.config.AGGREGATOR_BATCH_SIZE, "STREAMS", streamKey(partition), after,
      )) as StreamReply;
      const entries = reply?.[0]?.[1] ?? [];
      if (entries.length === 0) return;
      await this.apply(redis, partition, entries);
      after = entries[entries.length - 1]![0];
    }
  }

  /** Takes over entries idle in a dead worker's pending list. */
  private async reclaim(redis: RedisClient, partition: number, consumer: string): Promise<void> {
    const { AGGREGATOR_CLAIM_IDLE_MS: idle, AGGREGATOR_BATCH_SIZE: count } = this.options.config;
    let cursor = "0-0";
    do {
      const [next, entries] = (await redis.xautoclaim(streamKey(partition), GROUP, consumer, idle, cursor, "COUNT", count)) as [string, Entry[]];
      if (entries.length > 0) {
        this.options.log.info({ partition, entries: entries.length }, "reclaimed pending entries of an idle worker");
        await this.apply(redis, partition, entries);
      }
      cursor = next;
    } while (cursor !== "0-0" && !this.stopping);
  }

  /** Applies entries in one script: each one's ops run only if it was still pending (see lua.ts). */
  private async apply(redis: RedisClient, partition: number, entries: Entry[]): Promise<void> {
    const now = Date.now();
    const keys = [streamKey(partition)];
    const keyIndex = new Map<string, number>();
    const indexOf = (key: string) => {
      let index = keyIndex.get(key);
      if (index === undefined) {
        keys.push(key);
        keyIndex.set(key, (index = keys.length));
      }
      return index;
    };
    const args = [GROUP, String(entries.length)];
    const upkeep = new Map<string, Op>();
    const events = entries.map(([id, fields]) => {
      const event = this.decode(fields);
      const { ops, upkeep: tidy } = event ? eventOps(event, partition, now) : { ops: [], upkeep: [] };
      args.push(id, encodeOps(ops, indexOf));
      for (const op of tidy) {
        const key = upkeepKey(op);
        if (!this.recentUpkeep.has(key)) upkeep.set(key, op);
      }
      return event;
    });
    args.push(encodeOps([...upkeep.values()], indexOf));
    const applied = await redis.recsysApplyEvents(keys.length, ...keys, ...args);
    const visibleAt = Date.now();
    for (const key of upkeep.keys()) this.recentUpkeep.set(key, true);
    events.forEach((event, i) => {
      if (!event) eventsApplied.inc({ result: "undecodable" });
      else if (applied[i] !== 1) eventsApplied.inc({ result: "already_applied" });
      else if (isLate(event.ts, now)) eventsApplied.inc({ result: "late" });
      else {
        eventsApplied.inc({ result: "applied" });
        freshnessSeconds.observe(Math.max(0, visibleAt - event.ts) / 1000);
      }
    });
  }

  /** A stream entry's event with its category resolved; undefined if it cannot be read (acknowledged, counted in nothing). */
  private decode(fields: string[] | null): StreamEvent | undefined {
    const at = fields?.indexOf("e") ?? -1;
    const payload = at >= 0 ? fields![at + 1] : undefined;
    if (payload === undefined) return undefined;
    try {
      const event = decodeEvent(payload);
      return { ...event, category: event.category || (this.options.categories.get(event.itemId) ?? "") };
    } catch {
      return undefined;
    }
  }

  /** Every interval: lag metrics, trimming of applied entries, and (one process at a time) publishing the lists. */
  private async housekeep(): Promise<void> {
    const { config, log } = this.options;
    const redis = createRedis(config, { commandTimeoutMs: 5_000, name: "aggregator-housekeeping", scripts: featureScripts });
    let failing = false;
    while (!this.stopping) {
      await this.pause(config.POPULAR_PUBLISH_INTERVAL_MS);
      if (this.stopping) break;
      try {
        for (let p = 0; p < config.PARTITIONS; p++) await this.trimAndMeasure(redis, p);
        if ((await redis.set(publishLockKey, config.AGGREGATOR_CONSUMER_NAME, "PX", config.POPULAR_PUBLISH_INTERVAL_MS, "NX")) === "OK") {
          await publishLists(redis, config.PARTITIONS, config.POPULAR_TOP_K, Date.now());
        }
        if (failing) log.info("aggregator housekeeping recovered");
        failing = false;
      } catch (err) {
        if (!failing) log.warn({ err }, "aggregator housekeeping failing; retrying");
        failing = true;
      }
    }
    await closeRedis(redis);
  }

  /**
   * Exports length, pending and lag, and trims entries every worker is done with:
   * those before the oldest pending entry (or the last delivered one when none is
   * pending), so an accepted event is never trimmed before it is applied.
   */
  private async trimAndMeasure(redis: RedisClient, partition: number): Promise<void> {
    const key = streamKey(partition);
    const labels = { partition: String(partition) };
    const groups = ((await redis.xinfo("GROUPS", key).catch(() => [])) as unknown[][]).map(record);
    const group = groups.find((g) => g.name === GROUP);
    if (!group) return;
    const [length, pending] = await Promise.all([redis.xlen(key), redis.xpending(key, GROUP) as Promise<[number, string | null, string | null, unknown]>]);
    streamLength.set(labels, length);
    streamPending.set(labels, pending[0]);
    // Redis reports no lag when it cannot tell (after deletions): NaN, rather than a reassuring 0.
    streamLag.set(labels, group.lag === null || group.lag === undefined ? NaN : Number(group.lag));
    const safe = pending[0] > 0 ? pending[1]! : String(group["last-delivered-id"]);
    // Approximate (whole stream nodes), without the default cap of 10,000 entries per call.
    if (safe !== "0-0") await redis.xtrim(key, "MINID", "~", safe, "LIMIT", 0);
  }
}

/** The aggregator as its own process, with /metrics when METRICS_PORT is set. */
export async function runAggregator(env: Record<string, string | undefined> = process.env) {
  const config = loadFeatureConfig(env);
  const log = createLogger("feature-aggregator", config.LOG_LEVEL);
  const categories = await loadCategories(config.CATALOG_PATH);
  const metrics = config.METRICS_PORT !== undefined ? await startMetricsServer(config.HOST, config.METRICS_PORT) : undefined;
  const aggregator = new Aggregator({ config, categories, log });
  aggregator.start();
  log.info({ workers: config.AGGREGATOR_WORKERS, partitions: config.PARTITIONS, catalogItems: categories.size, metricsPort: metrics?.port }, "aggregator running");
  return {
    log,
    stop: async () => {
      await aggregator.stop();
      metrics?.server.close();
      log.info("aggregator stopped");
    },
  };
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const running = await runAggregator();
  const onSignal = () => running.stop().then(() => process.exit(0));
  process.once("SIGTERM", onSignal);
  process.once("SIGINT", onSignal);
}
