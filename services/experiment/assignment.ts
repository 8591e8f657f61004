// Deterministic assignment: pure functions of the definitions, the user and the clock,
// shared by the Assign RPC and the in-process assigner so both answer the same.
import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { Device, Platform } from "../../gen/recsys/common/v1/common_pb.js";
import { ExperimentStatus, type Experiment, type VariantConfig } from "../../gen/recsys/experiment/v1/experiment_pb.js";
import { invalidArgument } from "../kit/index.js";

/** Buckets of a hash space: layers, variants and the holdout all hash into 0..9,999. */
export const BUCKETS = 10_000;

const encoder = new TextEncoder();
let scratch = new Uint8Array(512);

/**
 * MurmurHash3 x86 32-bit of the UTF-8 bytes of key: integer-only arithmetic, so the
 * same on every platform and process (test vectors in test/assignment.test.ts).
 */
export function murmur3(key: string, seed = 0): number {
  if (scratch.length < key.length * 3) scratch = new Uint8Array(key.length * 3);
  const length = encoder.encodeInto(key, scratch).written;
  const bytes = scratch;
  const c1 = 0xcc9e2d51;
  const c2 = 0x1b873593;
  let h = seed >>> 0;
  const blocks = length & ~3;
  for (let i = 0; i < blocks; i += 4) {
    let k = bytes[i]! | (bytes[i + 1]! << 8) | (bytes[i + 2]! << 16) | (bytes[i + 3]! << 24);
    k = Math.imul(k, c1);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, c2);
    h ^= k;
    h = (h << 13) | (h >>> 19);
    h = (Math.imul(h, 5) + 0xe6546b64) | 0;
  }
  const tail = length & 3;
  if (tail > 0) {
    let k = bytes[blocks]!;
    if (tail >= 2) k ^= bytes[blocks + 1]! << 8;
    if (tail === 3) k ^= bytes[blocks + 2]! << 16;
    k = Math.imul(k, c1);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, c2);
    h ^= k;
  }
  h ^= length;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * The user's bucket under a salt. Salts carry a kind prefix (layer/, experiment/,
 * holdout/) so an experiment seed can never replay a layer's or the holdout's hash.
 */
export function bucketOf(salt: string, userId: string): number {
  return murmur3(`${salt}:${userId}`) % BUCKETS;
}

const layerSalt = (layer: string) => `layer/${layer}`;
export const experimentSalt = (experiment: Experiment) => `experiment/${experiment.seed || experiment.id}`;
const holdoutSalt = (salt: string) => `holdout/${salt}`;

/** The experiment's range of layer buckets [start, end); layer_share 0 means the rest of the layer. */
export function layerRange(experiment: Experiment): { start: number; end: number } {
  const start = Math.round(experiment.layerOffset * BUCKETS);
  const end = experiment.layerShare === 0 ? BUCKETS : Math.round((experiment.layerOffset + experiment.layerShare) * BUCKETS);
  return { start, end };
}

/** The request context fields targeting looks at. */
export interface AssignContext {
  device?: Device;
  platform?: Platform;
  location?: string;
}

/** One assignment, shaped as the Assignment message. */
export interface AssignmentResult {
  experimentId: string;
  layer: string;
  variant: string;
  config: VariantConfig | undefined;
  forced: boolean;
}

export interface AssignResult {
  assignments: AssignmentResult[];
  holdout: boolean;
}

export interface HoldoutSettings {
  /** Share of all users held out of every experiment, in percent (0..100, steps of 0.01). */
  percent: number;
  salt: string;
}

interface CompiledExperiment {
  definition: Experiment;
  salt: string;
  layerStart: number;
  layerEnd: number;
  startMs: number;
  endMs: number;
  /** Variant index per variant bucket, -1 for the unallocated ones. */
  variantOfBucket: Int8Array;
  devices: Set<number>;
  platforms: Set<number>;
  locations: string[];
}

/** Definitions prepared for fast assignment. */
export interface CompiledDefinitions {
  byId: Map<string, CompiledExperiment>;
  /** Running experiments by layer, layers in name order. */
  runningByLayer: [string, CompiledExperiment[]][];
}

function compileOne(definition: Experiment): CompiledExperiment {
  const variantOfBucket = new Int8Array(BUCKETS).fill(-1);
  definition.variants.forEach((variant, index) => {
    for (const range of variant.buckets) {
      variantOfBucket.fill(index, Math.max(0, range.start), Math.min(BUCKETS, range.end));
    }
  });
  const { start, end } = layerRange(definition);
  return {
    definition,
    salt: experimentSalt(definition),
    layerStart: start,
    layerEnd: end,
    startMs: definition.startTime ? timestampMs(definition.startTime) : -Infinity,
    endMs: definition.endTime ? timestampMs(definition.endTime) : Infinity,
    variantOfBucket,
    devices: new Set(definition.targeting?.devices ?? []),
    platforms: new Set(definition.targeting?.platforms ?? []),
    locations: definition.targeting?.locations ?? [],
  };
}

const byText = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

export function compile(experiments: Experiment[]): CompiledDefinitions {
  const byId = new Map<string, CompiledExperiment>();
  const layers = new Map<string, CompiledExperiment[]>();
  for (const definition of [...experiments].sort((a, b) => byText(a.id, b.id))) {
    const compiled = compileOne(definition);
    byId.set(definition.id, compiled);
    if (definition.status === ExperimentStatus.RUNNING) {
      layers.set(definition.layer, [...(layers.get(definition.layer) ?? []), compiled]);
    }
  }
  const runningByLayer = [...layers.entries()].sort(([a], [b]) => byText(a, b));
  return { byId, runningByLayer };
}

function targets(experiment: CompiledExperiment, context: AssignContext): boolean {
  if (experiment.devices.size > 0 && !experiment.devices.has(context.device ?? 0)) return false;
  if (experiment.platforms.size > 0 && !experiment.platforms.has(context.platform ?? 0)) return false;
  if (experiment.locations.length > 0) {
    const location = context.location ?? "";
    return experiment.locations.some((allowed) => location === allowed || location.startsWith(`${allowed}-`));
  }
  return true;
}

function assignmentOf(experiment: CompiledExperiment, variantIndex: number, forced: boolean): AssignmentResult {
  const variant = experiment.definition.variants[variantIndex]!;
  return { experimentId: experiment.definition.id, layer: experiment.definition.layer, variant: variant.name, config: variant.config, forced };
}

/**
 * Every active assignment of a user: forced variants first (QA; they replace their
 * layer), then, unless the user is in the global holdout, at most one running
 * experiment per layer whose layer range holds the user's layer bucket, whose time
 * window holds now and whose targeting matches, and the variant owning the user's
 * bucket in that experiment. Throws INVALID_ARGUMENT for a forced experiment or
 * variant that does not exist.
 */
export function assign(
  definitions: CompiledDefinitions,
  holdout: HoldoutSettings,
  userId: string,
  context: AssignContext = {},
  forced: Record<string, string> = {},
  nowMs = Date.now(),
): AssignResult {
  const assignments: AssignmentResult[] = [];
  const forcedLayers = new Set<string>();
  for (const [experimentId, variantName] of Object.entries(forced)) {
    const experiment = definitions.byId.get(experimentId);
    if (!experiment || experiment.definition.status === ExperimentStatus.STOPPED) {
      throw invalidArgument(`forced_variants["${experimentId}"]`, `no draft or running experiment "${experimentId}"`);
    }
    const index = experiment.definition.variants.findIndex((v) => v.name === variantName);
    if (index < 0) {
      const known = experiment.definition.variants.map((v) => v.name).join(", ");
      throw invalidArgument(`forced_variants["${experimentId}"]`, `experiment "${experimentId}" has no variant "${variantName}" (variants: ${known})`);
    }
    assignments.push(assignmentOf(experiment, index, true));
    forcedLayers.add(experiment.definition.layer);
  }

  const heldOut = holdout.percent > 0 && bucketOf(holdoutSalt(holdout.salt), userId) < Math.round(holdout.percent * 100);
  if (!heldOut) {
    for (const [layer, experiments] of definitions.runningByLayer) {
      if (forcedLayers.has(layer)) continue;
      const layerBucket = bucketOf(layerSalt(layer), userId);
      const experiment = experiments.find((e) => layerBucket >= e.layerStart && layerBucket < e.layerEnd);
      if (!experiment || nowMs < experiment.startMs || nowMs >= experiment.endMs || !targets(experiment, context)) continue;
      const variantIndex = experiment.variantOfBucket[bucketOf(experiment.salt, userId)]!;
      if (variantIndex >= 0) assignments.push(assignmentOf(experiment, variantIndex, false));
    }
  }
  assignments.sort((a, b) => byText(a.layer, b.layer) || byText(a.experimentId, b.experimentId));
  return { assignments, holdout: heldOut };
}
