// The in-process assigner: the prediction service runs assignment on a cached copy of
// the definitions instead of calling Assign on every request. It answers exactly as the
// Assign RPC (same pure assign()), reloads on every change announced on pub/sub, and
// checks the change counter periodically in case a notice was missed.
//
// The experiment service's library module: the one file of this folder another service
// may import (test/structure.test.ts holds the list), with the config it reads.
import { Counter, Gauge } from "prom-client";
import { z } from "zod";
import type { Experiment } from "../../gen/recsys/experiment/v1/experiment_pb.js";
import { createLogger, loadConfig, registry, type Logger } from "../kit/index.js";
import { assign, compile, type AssignContext, type AssignResult, type CompiledDefinitions, type HoldoutSettings } from "./assignment.js";
import { closeRedis, connectRedis, redisConfigShape, type RedisClient } from "../kit/redis.js";
import { CHANGES_CHANNEL, ExperimentStore, experimentScripts } from "./store.js";

/**
 * What the in-process assigner needs. The prediction service spreads this shape into
 * its own config, so it and the Assign RPC read the same variables and hold out the
 * same users.
 */
export const assignerConfigShape = {
  ...redisConfigShape,
  /** Percent of all users held out of every experiment (the global holdout), 0..100 in steps of 0.01. */
  HOLDOUT_PERCENT: z.coerce.number().min(0).max(100).default(0),
  /** Salt of the holdout hash; changing it holds out other users. */
  HOLDOUT_SALT: z.string().min(1).max(64).default("global"),
  /** Safety-net reload of the definitions, besides the pub/sub notice on every change. */
  EXPERIMENTS_REFRESH_MS: z.coerce.number().int().min(100).default(30_000),
  /** Bound on every Redis command, so a stalled Redis becomes UNAVAILABLE, not a hang. */
  REDIS_COMMAND_TIMEOUT_MS: z.coerce.number().int().min(10).default(1_000),
};

export type AssignerConfig = z.infer<z.ZodObject<typeof assignerConfigShape>>;

/** The assigner's settings from the environment (defaults for what is unset). */
export function loadAssignerConfig(env: Record<string, string | undefined>): AssignerConfig {
  return loadConfig(assignerConfigShape, env);
}

export interface Assigner {
  /** Every active assignment of the user, as the Assign RPC answers it. */
  assign(userId: string, context?: AssignContext, forced?: Record<string, string>): AssignResult;
  /** A loaded definition. */
  experiment(id: string): Experiment | undefined;
  /** Version (change counter) of the loaded definitions. */
  version(): number;
  /** Reloads now; concurrent calls share one reload and a call during a reload gets a fresh one after it. */
  refresh(): Promise<void>;
  close(): Promise<void>;
}

const definitionsLoaded = new Gauge({
  name: "recsys_experiment_definitions_loaded",
  help: "Experiment definitions held by the in-process assigner.",
  registers: [registry],
});
const reloads = new Counter({
  name: "recsys_experiment_definition_reloads_total",
  help: "Reloads of the experiment definitions by the in-process assigner, by result.",
  labelNames: ["result"] as const,
  registers: [registry],
});

/**
 * Connects to Redis, loads the definitions and keeps them fresh. Rejects when Redis
 * cannot be reached at start; later Redis outages keep the last definitions.
 */
export async function createAssigner(config: AssignerConfig, log: Logger = createLogger("experiment-assigner")): Promise<Assigner> {
  const commandTimeoutMs = config.REDIS_COMMAND_TIMEOUT_MS;
  const holdout: HoldoutSettings = { percent: config.HOLDOUT_PERCENT, salt: config.HOLDOUT_SALT };
  const redis = await connectRedis(config, { commandTimeoutMs, name: "experiment-assigner", log, scripts: experimentScripts });
  let subscriber: RedisClient | undefined;
  const store = new ExperimentStore(redis, log);

  let loadedVersion = -1;
  let definitions: CompiledDefinitions = compile([]);
  const load = async () => {
    try {
      const snapshot = await store.snapshot();
      // A slow reload must not replace a newer one that finished first.
      if (snapshot.version >= loadedVersion) {
        definitions = compile(snapshot.experiments);
        loadedVersion = snapshot.version;
        definitionsLoaded.set(snapshot.experiments.length);
      }
      reloads.inc({ result: "ok" });
    } catch (err) {
      reloads.inc({ result: "error" });
      throw err;
    }
  };

  let running: Promise<void> | undefined;
  let queued: Promise<void> | undefined;
  const start = () => (running = load().finally(() => (running = undefined)));
  const refresh = (): Promise<void> => {
    if (!running) return start();
    queued ??= running
      .catch(() => undefined)
      .then(() => {
        queued = undefined;
        return start();
      });
    return queued;
  };
  const refreshInBackground = (why: string) =>
    refresh().catch((err: Error) => log.warn({ err: err.message, why }, "experiment definitions reload failed; keeping the loaded ones"));

  try {
    await refresh();
    subscriber = await connectRedis(config, { commandTimeoutMs, name: "experiment-assigner-changes", subscriber: true, log });
    subscriber.on("message", () => void refreshInBackground("change notice"));
    await subscriber.subscribe(CHANGES_CHANNEL);
    // Notices sent while the subscriber was disconnected are lost: reload on reconnect.
    subscriber.on("ready", () => void refreshInBackground("reconnected"));
  } catch (err) {
    await Promise.all([closeRedis(redis), subscriber && closeRedis(subscriber)]);
    throw err;
  }

  const timer = setInterval(() => {
    store.version().then(
      (version) => (version !== loadedVersion ? refreshInBackground("periodic check") : undefined),
      (err: Error) => log.debug({ err: err.message }, "periodic definitions check failed"),
    );
  }, config.EXPERIMENTS_REFRESH_MS);
  timer.unref();

  return {
    assign: (userId, context, forced) => assign(definitions, holdout, userId, context, forced),
    experiment: (id) => definitions.byId.get(id)?.definition,
    version: () => loadedVersion,
    refresh,
    close: async () => {
      clearInterval(timer);
      await Promise.all([subscriber && closeRedis(subscriber), closeRedis(redis)]);
    },
  };
}
