import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { createLogger, exitOnSignals, startServer, type RunningServer } from "../kit/index.js";
import { embeddingsModifiedMs, readCatalog, readEmbeddings } from "../kit/artifacts.js";
import { loadRetrievalConfig } from "./config.js";
import { retrievalService, type RetrievalResources } from "./handlers.js";
import { IndexStore } from "./index-store.js";
import { normalize } from "./item-index.js";
import { OpsStream, opsStreamKey } from "./ops-log.js";
import { PopularLists, staticPopularity } from "./popular.js";

export interface RetrievalServer extends RunningServer {
  /** Resolves once the index is built or loaded and health says SERVING; rejects if that fails. */
  ready: Promise<void>;
}

/**
 * Starts the retrieval service: listens at once (health NOT_SERVING, calls answer
 * UNAVAILABLE), then reads the artifacts and builds or loads the index in the
 * background, and turns SERVING when it is live.
 */
export async function startRetrievalService(env: Record<string, string | undefined> = process.env): Promise<RetrievalServer> {
  const config = loadRetrievalConfig(env);
  const log = createLogger("retrieval", config.LOG_LEVEL);
  let resources: RetrievalResources | undefined;
  let popular: PopularLists | undefined;
  let store: IndexStore | undefined;
  const running = await startServer({
    name: "retrieval",
    config,
    log,
    services: [retrievalService({ config, resources: () => resources })],
    onShutdown: async () => {
      await Promise.all([popular?.close(), store?.close()]);
    },
  });
  const blockMs = 1_000;
  const replication = config.REPLICATE_INDEX_OPS
    ? {
        stream: new OpsStream(config, opsStreamKey(config.EMBEDDINGS_VERSION), { commandTimeoutMs: config.INDEX_LOG_TIMEOUT_MS, blockMs, log }),
        applyWaitMs: config.INDEX_LOG_APPLY_WAIT_MS,
        blockMs,
      }
    : undefined;

  const load = async () => {
    const embeddingsDir = join(config.MODELS_DIR, "embeddings", config.EMBEDDINGS_VERSION);
    const [artifacts, catalog, artifactsModifiedMs] = await Promise.all([
      readEmbeddings(embeddingsDir),
      readCatalog(join(config.MODELS_DIR, "catalog", config.CATALOG_VERSION, "items.jsonl")),
      embeddingsModifiedMs(embeddingsDir),
    ]);
    popular = new PopularLists(config, config.REDIS_TIMEOUT_MS, staticPopularity(catalog), log, config.POPULAR_CACHE_MS);
    const categoryOf = new Map(catalog.map((item) => [item.itemId, item.category]));
    const { dim, items } = artifacts;
    store = await IndexStore.open({
      dataDir: join(config.RETRIEVAL_DATA_DIR, config.EMBEDDINGS_VERSION),
      versionPrefix: config.EMBEDDINGS_VERSION,
      dim,
      params: { m: config.HNSW_M, efConstruction: config.HNSW_EF_CONSTRUCTION, efSearch: config.HNSW_EF_SEARCH },
      artifactsModifiedMs: artifactsModifiedMs ?? 0,
      artifactRows: () => {
        for (let row = 0; row < items.ids.length; row++) normalize(items.vectors.subarray(row * dim, (row + 1) * dim));
        return { ids: items.ids, categories: items.ids.map((id) => categoryOf.get(id) ?? ""), vectors: items.vectors };
      },
      log,
      replication,
    });
    resources = { store, users: artifacts.users, popular };
    running.setReady(true);
    log.info({ items: store.index.size, users: artifacts.users.ids.length, dim, version: store.index.version }, "ready");
  };
  return Object.assign(running, { ready: load() });
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const server = await startRetrievalService();
  exitOnSignals(server);
  server.ready.catch((err: unknown) => {
    server.log.fatal({ err }, "cannot build or load the index");
    process.exit(1);
  });
}
