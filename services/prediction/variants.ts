import { createHash } from "node:crypto";
import type { VariantConfig } from "../../gen/recsys/experiment/v1/experiment_pb.js";
import { invalidArgument } from "../kit/index.js";

/** What a variant changes in the ranking. */
export interface Variant {
  /** Variant name ("default", "mlp-heavy", or an experiment's "treatment"). */
  name: string;
  /** The experiment that chose it; empty for built-in variants. */
  experimentId: string;
  /** Model version to rank with; empty means the newest. */
  modelVersion: string;
  /** Ensemble weights by ranker name ("ranker-gbdt") and "embedding". */
  weights: Record<string, number>;
  /** Diversity: at most this many items of one category in the answer. */
  maxPerCategory: number;
  /** Identity of name + configuration, for cache keys: a changed configuration never serves old answers. */
  key: string;
}

/** The embedding-similarity member of the ensemble. */
export const EMBEDDING = "embedding";
const DEFAULT_MAX_PER_CATEGORY = 3;

function variant(name: string, experimentId: string, modelVersion: string, weights: Record<string, number>, maxPerCategory: number): Variant {
  const config = JSON.stringify([modelVersion, Object.entries(weights).sort(), maxPerCategory]);
  const digest = createHash("sha1").update(config).digest("hex").slice(0, 10);
  return { name, experimentId, modelVersion, weights, maxPerCategory, key: `${experimentId || "builtin"}/${name}#${digest}` };
}

/** Variants the service knows by name; model_variant may name any of them. */
export const BUILT_IN_VARIANTS: ReadonlyMap<string, Variant> = new Map(
  [
    variant("default", "", "", { "ranker-gbdt": 0.45, "ranker-mlp": 0.45, [EMBEDDING]: 0.1 }, DEFAULT_MAX_PER_CATEGORY),
    variant("gbdt-only", "", "", { "ranker-gbdt": 1 }, DEFAULT_MAX_PER_CATEGORY),
    variant("mlp-heavy", "", "", { "ranker-gbdt": 0.15, "ranker-mlp": 0.7, [EMBEDDING]: 0.15 }, DEFAULT_MAX_PER_CATEGORY),
    variant("int8", "", "", { "ranker-gbdt": 0.45, "ranker-mlp-int8": 0.45, [EMBEDDING]: 0.1 }, DEFAULT_MAX_PER_CATEGORY),
  ].map((v) => [v.name, v]),
);

export const DEFAULT_VARIANT = BUILT_IN_VARIANTS.get("default")!;

/** True when an experiment variant's configuration touches the ranking. */
export function changesRanking(config: VariantConfig | undefined): boolean {
  return !!config && (config.modelVersion !== "" || Object.keys(config.ensembleWeights).length > 0 || "max_per_category" in config.params);
}

/** An experiment variant as a ranking variant; unset parts keep the defaults. */
export function fromExperiment(experimentId: string, name: string, config: VariantConfig | undefined): Variant {
  const weights = config && Object.values(config.ensembleWeights).some((w) => w > 0) ? { ...config.ensembleWeights } : DEFAULT_VARIANT.weights;
  const perCategory = Number.parseInt(config?.params.max_per_category ?? "", 10);
  return variant(
    name,
    experimentId,
    config?.modelVersion ?? "",
    weights,
    Number.isFinite(perCategory) && perCategory > 0 ? perCategory : DEFAULT_MAX_PER_CATEGORY,
  );
}

export type ExplicitVariant = { builtIn: Variant } | { experimentId: string; variant: string };

/**
 * Parses an explicit model_variant: a built-in name, or "<experiment>/<variant>" of
 * an experiment (checked against the experiment service by the caller). Anything
 * else is INVALID_ARGUMENT naming the field.
 */
export function parseExplicitVariant(value: string, field: string): ExplicitVariant | undefined {
  if (value === "" || value === "auto") return undefined;
  const builtIn = BUILT_IN_VARIANTS.get(value);
  if (builtIn) return { builtIn };
  const match = /^([a-z][a-z0-9_-]{0,63})\/([a-z][a-z0-9_-]{0,63})$/.exec(value);
  if (match) return { experimentId: match[1]!, variant: match[2]! };
  const known = [...BUILT_IN_VARIANTS.keys()].join(", ");
  throw invalidArgument(field, `unknown variant "${value}": use "auto", one of ${known}, or "<experiment>/<variant>" of a running experiment`);
}
