import { pathToFileURL } from "node:url";
import { createLogger, exitOnSignals, startServer } from "../kit/index.js";
import { Aggregator } from "./aggregator.js";
import { loadCategories } from "./catalog.js";
import { loadFeatureConfig } from "./config.js";
import { featureService } from "./handlers.js";
import { redisUp } from "./metrics.js";
import { closeRedis, createRedis } from "../kit/redis.js";
import { featureScripts } from "./lua.js";
import { OnlineStore } from "./store.js";

const HEALTH_CHECK_INTERVAL_MS = 1_000;

/**
 * The feature service: online store reads and writes, event ingestion, and (unless
 * AGGREGATOR_IN_PROCESS=false) the stream aggregator. Health is SERVING only while
 * Redis answers PING.
 */
export async function startFeatureService(env: Record<string, string | undefined> = process.env) {
  const config = loadFeatureConfig(env);
  const log = createLogger("feature", config.LOG_LEVEL);
  const redisOptions = { commandTimeoutMs: config.REDIS_COMMAND_TIMEOUT_MS, scripts: featureScripts };
  const redis = createRedis(config, { ...redisOptions, name: "feature" });
  // Durable ingest waits for replicas on a connection of its own (see featureService).
  const ingestRedis = config.INGEST_REPLICA_ACKS > 0 ? createRedis(config, { ...redisOptions, name: "feature-ingest" }) : redis;
  const store = new OnlineStore(redis, config.PARTITIONS, {
    maxEntities: config.CACHE_MAX_ENTITIES,
    batchTtlMs: config.CACHE_BATCH_TTL_MS,
    streamTtlMs: config.CACHE_STREAM_TTL_MS,
    absentTtlMs: config.CACHE_ABSENT_TTL_MS,
  });
  const aggregator = config.AGGREGATOR_IN_PROCESS ? new Aggregator({ config, categories: await loadCategories(config.CATALOG_PATH), log }) : undefined;

  let checking: NodeJS.Timeout | undefined;
  let stopped = false;
  const running = await startServer({
    name: "feature",
    config,
    log,
    services: [featureService({ store, config, ingestRedis })],
    onShutdown: async () => {
      stopped = true;
      clearInterval(checking);
      await aggregator?.stop();
      await Promise.all([closeRedis(redis), ingestRedis !== redis && closeRedis(ingestRedis)]);
    },
  });

  let up = false;
  const report = (reachable: boolean, reason?: string) => {
    if (reachable === up || stopped) return;
    up = reachable;
    redisUp.set(reachable ? 1 : 0);
    running.setReady(reachable);
    if (reachable) log.info("redis reachable: serving");
    else log.warn({ reason }, "redis unreachable: not serving");
  };
  const check = () =>
    redis.ping().then(
      () => report(true),
      (err: unknown) => report(false, String(err)),
    );
  redis.on("close", () => report(false, "connection closed"));
  redis.on("ready", check);
  checking = setInterval(check, HEALTH_CHECK_INTERVAL_MS);
  checking.unref();
  aggregator?.start();
  return running;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  exitOnSignals(await startFeatureService());
}
