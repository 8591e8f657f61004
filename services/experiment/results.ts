// Per-variant results from the incrementally kept aggregates: pure, so the numbers can
// be checked against a reference without Redis.
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { Experiment, GetResultsResponseSchema, VariantResultSchema } from "../../gen/recsys/experiment/v1/experiment_pb.js";
import {
  chiSquareGoodnessOfFit,
  meanInterval,
  msprtPValue,
  sampleOf,
  twoProportionZTest,
  welchTTest,
  wilsonInterval,
} from "./stats.js";

/** What the store keeps per variant: events, users, and per-user metric sums. */
export interface VariantAggregate {
  exposures: number;
  users: number;
  /** Users with at least one outcome of the metric. */
  conversions: number;
  /** Sum over users of the user's total metric value. */
  sum: number;
  /** Sum over users of the square of the user's total metric value. */
  sumOfSquares: number;
}

/** SRM flag threshold (the issue: flagged below p = 0.001). */
export const SRM_P_THRESHOLD = 0.001;

/**
 * Results for every variant against the first (the control): Wilson and Student-t
 * intervals at 1 - alpha, relative lift of the conversion rate, two-proportion z-test,
 * Welch's t-test and the mSPRT always-valid p-value of the mean, plus the
 * sample-ratio-mismatch check of users against the variants' bucket shares.
 */
export function computeResults(
  experiment: Experiment,
  metric: string,
  alpha: number,
  sequentialTau: number,
  aggregates: Map<string, VariantAggregate>,
): MessageInitShape<typeof GetResultsResponseSchema> {
  const empty: VariantAggregate = { exposures: 0, users: 0, conversions: 0, sum: 0, sumOfSquares: 0 };
  const rows = experiment.variants.map((v) => ({ name: v.name, aggregate: aggregates.get(v.name) ?? empty }));
  const control = rows[0]!.aggregate;
  const controlSample = sampleOf(control.users, control.sum, control.sumOfSquares);
  const controlRate = control.users > 0 ? control.conversions / control.users : 0;

  const variants = rows.map(({ name, aggregate }): MessageInitShape<typeof VariantResultSchema> => {
    const sample = sampleOf(aggregate.users, aggregate.sum, aggregate.sumOfSquares);
    const rate = aggregate.users > 0 ? aggregate.conversions / aggregate.users : 0;
    const [rateLow, rateHigh] = wilsonInterval(aggregate.conversions, aggregate.users, alpha);
    const [meanLow, meanHigh] = meanInterval(sample, alpha);
    const isControl = name === rows[0]!.name;
    const pSequential = isControl ? 1 : msprtPValue(controlSample, sample, sequentialTau);
    return {
      variant: name,
      exposures: BigInt(aggregate.exposures),
      users: BigInt(aggregate.users),
      conversions: BigInt(aggregate.conversions),
      conversionRate: rate,
      conversionRateCiLow: rateLow,
      conversionRateCiHigh: rateHigh,
      mean: sample.mean,
      meanCiLow: meanLow,
      meanCiHigh: meanHigh,
      lift: isControl ? 0 : controlRate > 0 ? (rate - controlRate) / controlRate : NaN,
      pValueProportion: isControl ? 1 : twoProportionZTest(control.conversions, control.users, aggregate.conversions, aggregate.users).pValue,
      pValueMean: isControl ? 1 : welchTTest(controlSample, sample).pValue,
      pValueSequential: pSequential,
      significant: !isControl && pSequential < alpha,
    };
  });

  const bucketShares = experiment.variants.map((v) => v.buckets.reduce((sum, r) => sum + (r.end - r.start), 0));
  const srm = chiSquareGoodnessOfFit(
    rows.map((r) => r.aggregate.users),
    bucketShares,
  );
  return {
    experimentId: experiment.id,
    metric,
    variants,
    sampleRatio: { chiSquare: srm.chiSquare, pValue: srm.pValue, mismatch: srm.pValue < SRM_P_THRESHOLD },
  };
}
