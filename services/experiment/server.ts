import { pathToFileURL } from "node:url";
import { createLogger, exitOnSignals, startServer } from "../kit/index.js";
import { createAssigner } from "./assigner.js";
import { loadExperimentConfig } from "./config.js";
import { experimentService } from "./handlers.js";
import { closeRedis, connectRedis } from "../kit/redis.js";
import { ExperimentStore, experimentScripts } from "./store.js";

/** Starts the experiment service; ready once Redis answered and the definitions are loaded. */
export async function startExperimentService(env: Record<string, string | undefined> = process.env) {
  const config = loadExperimentConfig(env);
  const log = createLogger("experiment", config.LOG_LEVEL);
  const redis = await connectRedis(config, { commandTimeoutMs: config.REDIS_COMMAND_TIMEOUT_MS, name: "experiment", log, scripts: experimentScripts });
  const assigner = await createAssigner(config, log).catch(async (err: unknown) => {
    await closeRedis(redis);
    throw err;
  });
  const store = new ExperimentStore(redis, log);
  const running = await startServer({
    name: "experiment",
    config,
    log,
    services: [experimentService({ config, store, assigner })],
    onShutdown: async () => {
      await assigner.close();
      await closeRedis(redis);
    },
  });
  running.setReady(true);
  return running;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  exitOnSignals(await startExperimentService());
}
