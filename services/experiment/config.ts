import { z } from "zod";
import { baseConfigShape, loadConfig } from "../kit/index.js";
import { assignerConfigShape } from "./assigner.js";

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

export function loadExperimentConfig(env: Record<string, string | undefined>): ExperimentConfig {
  return loadConfig(experimentConfigShape, env);
}
