import { pathToFileURL } from "node:url";
import { file_recsys_echo_v1_echo } from "../../gen/recsys/echo/v1/echo_pb.js";
import { ExperimentService, file_recsys_experiment_v1_experiment } from "../../gen/recsys/experiment/v1/experiment_pb.js";
import { FeatureService, file_recsys_feature_v1_feature } from "../../gen/recsys/feature/v1/feature_pb.js";
import { RetrievalService, file_recsys_retrieval_v1_retrieval } from "../../gen/recsys/retrieval/v1/retrieval_pb.js";
import { createLogger, createServiceClient, exitOnSignals, startServer, type Logger } from "../kit/index.js";
import { OutcomeFeed } from "../kit/outcomes.js";
import { Admission } from "./admission.js";
import { VariantResolver } from "./variant-resolver.js";
import { PredictionCache } from "./cache.js";
import { CandidateReader } from "./candidates.js";
import { loadPredictionConfig, type PredictionConfig } from "./config.js";
import { FeatureReader } from "./features.js";
import { predictionService } from "./handlers.js";
import { ExposureRecorder } from "./exposures.js";
import { ModelStore } from "./model-store.js";
import { PopularCopy } from "./popular.js";
import { OnlineAccuracy } from "./online-accuracy.js";
import { Predictor } from "./predictor.js";
import { ShadowPairing } from "./shadow.js";

/**
 * Everything Predict needs, loaded and warmed: models, caches, upstream clients,
 * the variant resolver. Shared by the server and the precompute job.
 */
export async function createPredictor(config: PredictionConfig, log: Logger) {
  const store = new ModelStore({
    modelsDir: config.MODELS_DIR,
    threads: config.ORT_THREADS,
    batch: {
      maxRows: config.BATCH_MAX_ROWS,
      maxWaitMs: config.BATCH_MAX_WAIT_MS,
      p99TargetMs: config.BATCH_P99_TARGET_MS,
      maxInFlight: config.BATCH_MAX_IN_FLIGHT,
    },
    serviceVersion: config.SERVICE_VERSION,
    maxModelAgeSeconds: config.MODEL_MAX_AGE_S,
    drift: { sampleRate: config.DRIFT_SAMPLE_RATE, windowRows: config.DRIFT_WINDOW_ROWS },
    log,
  });
  const models = await store.open();
  log.info({ models: models.versions }, "models loaded and warmed");
  const redis = { REDIS_URL: config.REDIS_URL, REDIS_CLUSTER_NODES: config.REDIS_CLUSTER_NODES };
  const cache = new PredictionCache({
    redis,
    redisTimeoutMs: config.REDIS_TIMEOUT_MS,
    l1MaxEntries: config.L1_MAX_ENTRIES,
    l1TtlMs: config.L1_TTL_MS,
    freshSeconds: config.CACHE_FRESH_S,
    staleSeconds: config.CACHE_STALE_S,
    version: config.SERVICE_VERSION,
    log,
  });
  const popular = new PopularCopy({
    redis,
    readTimeoutMs: config.POPULAR_READ_TIMEOUT_MS,
    depth: config.POPULAR_DEPTH,
    categories: () => store.serving.catalog.categories,
    version: config.SERVICE_VERSION,
    log,
  });
  const features = new FeatureReader(config.FEATURE_ADDR ? createServiceClient(FeatureService, config.FEATURE_ADDR) : undefined, {
    userCacheEntries: 100_000,
    userCacheTtlMs: 30 * 60_000,
    itemCacheEntries: 200_000,
    itemRefreshMs: 30_000,
    itemMaxAgeMs: 10 * 60_000,
    itemUnknownMs: 1_000,
    version: config.SERVICE_VERSION,
  });
  const experiments = config.EXPERIMENT_ADDR ? createServiceClient(ExperimentService, config.EXPERIMENT_ADDR) : undefined;
  const variants = new VariantResolver(
    experiments,
    config,
    log,
  );
  variants.start();
  // Redis holds the L2 cache, the popular lists and the experiments: wait for it briefly, so
  // the first answers have them, but serve without them when it is away.
  const [cacheUp, popularUp, assignerUp] = await Promise.all([
    cache.connect(2000),
    popular.connect(2000).then((up) => up && popular.refresh()),
    variants.connected(2000),
  ]);
  if (!cacheUp) log.warn({ url: config.REDIS_URL }, "Redis not reachable yet: serving without the L2 cache until it is");
  if (!popularUp) log.warn("popular lists not read yet: the popular rung asks retrieval until they are");
  if (!assignerUp) log.warn("experiment assignment not in-process yet: asking the Assign RPC until it is");
  popular.start(config.POPULAR_REFRESH_MS);
  // The catalogue's item features, read in the background: requests then wait for the user's features and candidates only.
  void features.prefetchItems([...store.serving.catalog.byId.keys()]).then((known) => log.info({ items: known }, "item features prefetched"));
  for (const [name, address] of Object.entries({ FEATURE_ADDR: config.FEATURE_ADDR, RETRIEVAL_ADDR: config.RETRIEVAL_ADDR, EXPERIMENT_ADDR: config.EXPERIMENT_ADDR })) {
    if (!address) log.warn(`${name} is not set: answers degrade down the fallback ladder`);
  }
  const accuracy = new OnlineAccuracy({
    serviceVersion: config.SERVICE_VERSION,
    attributionMs: config.ACCURACY_ATTRIBUTION_S * 1000,
    minLists: config.ACCURACY_MIN_LISTS,
  });
  // Clicks and purchases, as the feature service accepts them, for the join with the answers served.
  const outcomes = new OutcomeFeed(redis, (o) => accuracy.outcome(o.userId, o.itemId, o.atMs), { commandTimeoutMs: config.REDIS_COMMAND_TIMEOUT_MS, log });
  const exposures = experiments
    ? new ExposureRecorder({
        client: experiments,
        maxQueued: config.EXPOSURE_QUEUE_MAX,
        batchSize: config.EXPOSURE_BATCH_SIZE,
        flushIntervalMs: config.EXPOSURE_FLUSH_MS,
        callTimeoutMs: 5_000,
        maxAttempts: 5,
        log,
      })
    : undefined;
  const shadow = new ShadowPairing(redis, config.SERVICE_VERSION, { commandTimeoutMs: config.REDIS_COMMAND_TIMEOUT_MS, log });
  const predictor = new Predictor({
    config,
    accuracy,
    exposures,
    shadow,
    store,
    cache,
    features,
    retrieval: new CandidateReader(config.RETRIEVAL_ADDR ? createServiceClient(RetrievalService, config.RETRIEVAL_ADDR) : undefined, { k: config.CANDIDATES_K, version: config.SERVICE_VERSION, log }),
    popular,
    variants,
    admission: new Admission(config.MAX_CONCURRENT, config.SHED_QUEUE_DELAY_MS),
    log,
  });
  const close = async () => {
    accuracy.close();
    await Promise.all([popular.close(), shadow.close(), outcomes.close(), store.close(), cache.close(), variants.close(), exposures?.close(2_000)]);
  };
  return { predictor, store, cache, variants, close };
}

/**
 * Starts the prediction service. It listens once the models are loaded and warmed
 * and is SERVING from then on: upstream outages degrade answers down the fallback
 * ladder, they do not make the service unready.
 */
export async function startPredictionService(env: Record<string, string | undefined> = process.env) {
  const config = loadPredictionConfig(env);
  const log = createLogger("prediction", config.LOG_LEVEL).child({ version: config.SERVICE_VERSION });
  const { predictor, store, cache, close } = await createPredictor(config, log);
  const running = await startServer({
    name: "prediction",
    config,
    log,
    services: [predictionService({ config, predictor, cache, store })],
    // The edge sends reflection here: describe every service behind it.
    reflectAlso: [file_recsys_feature_v1_feature, file_recsys_retrieval_v1_retrieval, file_recsys_experiment_v1_experiment, file_recsys_echo_v1_echo],
    onShutdown: close,
  }).catch(async (err: unknown) => {
    await close();
    throw err;
  });
  store.watch(config.MODELS_POLL_MS);
  running.setReady(true);
  return running;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  exitOnSignals(await startPredictionService());
}
