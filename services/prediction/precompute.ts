// Batch precomputation of predictions for the most active users:
//
//   npm run precompute [-- --users 1000 --devices unspecified,mobile,desktop --concurrency 8]
//
// Reads the environment like the server (REDIS_URL, MODELS_DIR, FEATURE_ADDR,
// RETRIEVAL_ADDR, EXPERIMENT_ADDR...), ranks the users the models know by
// user_profile:user_log_events from the feature store, and computes each one's
// prediction in each device context for the current time-of-day bucket, through the
// same pipeline as Predict. Full-pipeline answers are written to the L2 cache;
// degraded ones are counted and not written.
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Device, RequestContextSchema } from "../../gen/recsys/common/v1/common_pb.js";
import { FeatureService } from "../../gen/recsys/feature/v1/feature_pb.js";
import { FallbackLevel } from "../../gen/recsys/prediction/v1/prediction_pb.js";
import { createLogger, createServiceClient } from "../kit/index.js";
import { loadPredictionConfig, type PredictionConfig } from "./config.js";
import { createPredictor } from "./server.js";

export interface PrecomputeOptions {
  config: PredictionConfig;
  users: number;
  devices: Device[];
  concurrency: number;
  /** The time the contexts are computed for (their time-of-day bucket); default now. */
  atMs?: number;
  onProgress?: (done: number, total: number) => void;
}

export interface PrecomputeSummary {
  users: string[];
  written: number;
  degraded: number;
  seconds: number;
}

const FEATURE_BATCH = 100;
/**
 * A batch job can wait for in-process assignment: computed under the default variant
 * instead, an experiment user's entries would sit under a key the service never reads.
 */
const ASSIGNER_WAIT_MS = 15_000;

/** The users the models know, most active first (user_log_events from the feature store). */
async function mostActiveUsers(config: PredictionConfig, known: string[], n: number): Promise<string[]> {
  if (!config.FEATURE_ADDR) throw new Error("FEATURE_ADDR is not set: cannot tell the most active users");
  const features = createServiceClient(FeatureService, config.FEATURE_ADDR);
  const activity = new Map<string, number>();
  for (let i = 0; i < known.length; i += FEATURE_BATCH) {
    const userIds = known.slice(i, i + FEATURE_BATCH);
    const response = await features.getOnlineFeatures({ userIds, featureRefs: ["user_profile:user_log_events"] }, { timeoutMs: 5000 });
    for (const user of response.users) {
      const value = user.features["user_profile:user_log_events"]?.value?.kind;
      activity.set(user.entityId, value?.case === "doubleValue" ? value.value : 0);
    }
  }
  return [...activity.entries()]
    .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))
    .slice(0, n)
    .map(([userId]) => userId);
}

export async function precompute(options: PrecomputeOptions): Promise<PrecomputeSummary> {
  const started = performance.now();
  const log = createLogger("precompute", options.config.LOG_LEVEL);
  const { predictor, store, variants, close } = await createPredictor(options.config, log);
  try {
    if (!(await variants.connected(ASSIGNER_WAIT_MS))) log.warn("experiment assignment is not in-process; users in experiments are precomputed under what the Assign RPC answers, or the default variant");
    const users = await mostActiveUsers(options.config, store.serving.embeddings.users.ids, options.users);
    const timestamp = timestampFromMs(options.atMs ?? Date.now());
    const jobs = users.flatMap((userId) => options.devices.map((device) => ({ userId, context: create(RequestContextSchema, { device, timestamp }) })));
    let next = 0;
    let done = 0;
    let written = 0;
    const worker = async () => {
      while (next < jobs.length) {
        const { userId, context } = jobs[next++]!;
        const rung = await predictor.recompute(userId, context);
        if (rung === FallbackLevel.PRIMARY) written++;
        options.onProgress?.(++done, jobs.length);
      }
    };
    await Promise.all(Array.from({ length: options.concurrency }, worker));
    return { users, written, degraded: jobs.length - written, seconds: (performance.now() - started) / 1000 };
  } finally {
    await close();
  }
}

/** A one-line progress bar on stderr, redrawn in place on a terminal and every 10% otherwise. */
function progressBar(): (done: number, total: number) => void {
  const started = performance.now();
  let lastDecile = -1;
  return (done, total) => {
    const fraction = done / total;
    const width = 30;
    const rate = done / ((performance.now() - started) / 1000);
    const line = `[${"#".repeat(Math.round(fraction * width)).padEnd(width, ".")}] ${done}/${total} predictions  ${rate.toFixed(1)}/s  eta ${Math.ceil((total - done) / Math.max(rate, 1e-9))} s`;
    if (process.stderr.isTTY) {
      process.stderr.write(`\r${line}${done === total ? "\n" : ""}`);
    } else if (Math.floor(fraction * 10) > lastDecile) {
      lastDecile = Math.floor(fraction * 10);
      process.stderr.write(`${line}\n`);
    }
  };
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const { values } = parseArgs({
    options: {
      users: { type: "string", default: "1000" },
      devices: { type: "string", default: "unspecified,mobile,desktop" },
      concurrency: { type: "string", default: "8" },
    },
  });
  const devices = values.devices.split(",").map((name) => {
    const device = Device[name.trim().toUpperCase() as keyof typeof Device];
    if (device === undefined) throw new Error(`--devices: unknown device "${name}" (${Object.keys(Device).filter((k) => Number.isNaN(Number(k))).join(", ").toLowerCase()})`);
    return device;
  });
  const count = (name: string, value: string) => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < 1) throw new Error(`--${name}: expected a positive integer, got "${value}"`);
    return n;
  };
  const config = loadPredictionConfig({ LOG_LEVEL: "warn", ...process.env, MODELS_POLL_MS: "0" });
  const summary = await precompute({
    config,
    users: count("users", values.users),
    devices,
    concurrency: count("concurrency", values.concurrency),
    onProgress: progressBar(),
  });
  console.log(
    `precomputed ${summary.written} predictions for ${summary.users.length} users in ${summary.seconds.toFixed(1)} s` +
      (summary.degraded > 0 ? `; ${summary.degraded} degraded answers were not cached (check the upstreams)` : ""),
  );
  process.exit(summary.written > 0 || summary.users.length === 0 ? 0 : 1);
}
