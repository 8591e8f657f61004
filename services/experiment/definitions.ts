// Validation of experiment definitions and the server-set parts of a stored one
// (variant buckets, revision). Pure: the handler passes in what is stored.
import { clone, create } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import {
  BucketRangeSchema,
  ExperimentSchema,
  ExperimentStatus,
  type BucketRange,
  type Experiment,
  type Variant,
} from "../../gen/recsys/experiment/v1/experiment_pb.js";
import { invalidArgument } from "../kit/index.js";
import { BUCKETS, experimentSalt, layerRange } from "./assignment.js";

/** Tolerance for allocation sums: 0.1 + 0.2 + 0.7 is 1 here. */
const EPSILON = 1e-9;

const bucketCount = (allocation: number) => Math.round(allocation * BUCKETS);
const describeRange = ({ start, end }: { start: number; end: number }) => `[${start / BUCKETS}, ${end / BUCKETS})`;

function validateVariants(experiment: Experiment): void {
  const seen = new Set<string>();
  experiment.variants.forEach((variant, i) => {
    if (seen.has(variant.name)) throw invalidArgument(`experiment.variants[${i}].name`, `duplicate variant name "${variant.name}"`);
    seen.add(variant.name);
  });
  const total = experiment.variants.reduce((sum, v) => sum + v.allocation, 0);
  const totalBuckets = experiment.variants.reduce((sum, v) => sum + bucketCount(v.allocation), 0);
  if (total > 1 + EPSILON || totalBuckets > BUCKETS) {
    throw invalidArgument("experiment.variants", `allocations sum to ${Number(total.toFixed(6))}; they must sum to at most 1`);
  }
}

function validateRangeAndTime(experiment: Experiment): void {
  if (experiment.layerShare > 0 && experiment.layerOffset + experiment.layerShare > 1 + EPSILON) {
    throw invalidArgument(
      "experiment.layer_share",
      `layer_offset ${experiment.layerOffset} + layer_share ${experiment.layerShare} run past the end of the layer (1)`,
    );
  }
  if (experiment.startTime && experiment.endTime && timestampMs(experiment.endTime) <= timestampMs(experiment.startTime)) {
    throw invalidArgument("experiment.end_time", "end_time must be after start_time");
  }
}

/** Non-stopped experiments of a layer own disjoint ranges, so a user is in at most one of them. */
function validateNoOverlap(experiment: Experiment, others: Experiment[]): void {
  if (experiment.status === ExperimentStatus.STOPPED) return;
  const mine = layerRange(experiment);
  if (mine.end <= mine.start) return;
  for (const other of others) {
    if (other.id === experiment.id || other.layer !== experiment.layer || other.status === ExperimentStatus.STOPPED) continue;
    const theirs = layerRange(other);
    if (mine.start < theirs.end && theirs.start < mine.end) {
      throw invalidArgument(
        "experiment.layer_offset",
        `layer "${experiment.layer}": range ${describeRange(mine)} overlaps experiment "${other.id}" ${describeRange(theirs)}`,
      );
    }
  }
}

/**
 * Rules that keep users where they are: a running experiment only grows (allocations,
 * layer share) and keeps its layer, offset, seed and variants; a stopped one stays stopped.
 */
function validateTransition(experiment: Experiment, stored: Experiment): void {
  if (stored.status === ExperimentStatus.STOPPED && experiment.status !== ExperimentStatus.STOPPED) {
    throw invalidArgument("experiment.status", "a stopped experiment stays stopped; create a new experiment instead");
  }
  if (stored.status !== ExperimentStatus.RUNNING || experiment.status !== ExperimentStatus.RUNNING) return;
  const advice = "it would move users of a running experiment; stop it and create a new one instead";
  if (experiment.layer !== stored.layer) throw invalidArgument("experiment.layer", `cannot change the layer: ${advice}`);
  if (experimentSalt(experiment) !== experimentSalt(stored)) throw invalidArgument("experiment.seed", `cannot change the seed: ${advice}`);
  const [before, after] = [layerRange(stored), layerRange(experiment)];
  if (after.start !== before.start) throw invalidArgument("experiment.layer_offset", `cannot change layer_offset: ${advice}`);
  if (after.end < before.end) {
    throw invalidArgument("experiment.layer_share", `layer_share may only grow (${describeRange(before)} -> ${describeRange(after)}): ${advice}`);
  }
  for (const old of stored.variants) {
    const index = experiment.variants.findIndex((v) => v.name === old.name);
    if (index < 0) throw invalidArgument("experiment.variants", `cannot remove variant "${old.name}": ${advice}`);
    const allocation = experiment.variants[index]!.allocation;
    if (bucketCount(allocation) < bucketCount(old.allocation)) {
      throw invalidArgument(`experiment.variants[${index}].allocation`, `allocation may only grow (${old.allocation} -> ${allocation}): ${advice}`);
    }
  }
}

/**
 * Bucket ranges per variant. Variants keep the buckets they had (trimmed from the top
 * when an allocation shrinks) and grow into the lowest free buckets, so growing any
 * variant only takes users from the unallocated range. A new experiment therefore gets
 * cumulative ranges: the first variant [0, a1), the next [a1, a1 + a2), ...
 */
function planBuckets(variants: Variant[], stored: Variant[] = []): BucketRange[][] {
  const owner = new Int8Array(BUCKETS).fill(-1);
  const counts = variants.map(() => 0);
  variants.forEach((variant, index) => {
    const previous = stored.find((v) => v.name === variant.name);
    for (const range of previous?.buckets ?? []) {
      owner.fill(index, range.start, range.end);
      counts[index]! += range.end - range.start;
    }
  });
  variants.forEach((variant, index) => {
    const target = bucketCount(variant.allocation);
    for (let b = BUCKETS - 1; b >= 0 && counts[index]! > target; b--) {
      if (owner[b] === index) {
        owner[b] = -1;
        counts[index]!--;
      }
    }
  });
  variants.forEach((variant, index) => {
    const target = bucketCount(variant.allocation);
    for (let b = 0; b < BUCKETS && counts[index]! < target; b++) {
      if (owner[b] === -1) {
        owner[b] = index;
        counts[index]!++;
      }
    }
  });
  const ranges: BucketRange[][] = variants.map(() => []);
  for (let b = 0; b < BUCKETS; ) {
    const index = owner[b]!;
    let end = b + 1;
    while (end < BUCKETS && owner[end] === index) end++;
    if (index >= 0) ranges[index]!.push(create(BucketRangeSchema, { start: b, end }));
    b = end;
  }
  return ranges;
}

/**
 * Validates a definition against what is stored and returns the definition to store:
 * a copy with the server-set variant buckets and the next revision. `stored` is the
 * current version on update (undefined on create), `others` every stored experiment.
 * Throws INVALID_ARGUMENT naming the field.
 */
export function prepareDefinition(input: Experiment, stored: Experiment | undefined, others: Experiment[]): Experiment {
  validateVariants(input);
  validateRangeAndTime(input);
  if (stored) validateTransition(input, stored);
  validateNoOverlap(input, others);
  const next = clone(ExperimentSchema, input);
  const buckets = planBuckets(next.variants, stored?.variants);
  next.variants.forEach((variant, i) => (variant.buckets = buckets[i]!));
  next.revision = (stored?.revision ?? 0n) + 1n;
  return next;
}
