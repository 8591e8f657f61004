import { z } from "zod";
import { baseConfigShape } from "../kit/index.js";
import { redisConfigShape } from "../kit/redis.js";

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

export const experimentConfigShape = {
  ...baseConfigShape,
  ...assignerConfigShape,
  /**
   * Mixing standard deviation of the sequential test's normal prior on the difference
   * of means, as a standardized effect size (difference / pooled standard deviation).
   */
  SEQUENTIAL_TAU: z.coerce.number().positive().max(10).default(0.05),
};

export type ExperimentConfig = z.infer<z.ZodObject<typeof experimentConfigShape>>;
