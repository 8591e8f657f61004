import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { ExperimentSchema, ExperimentStatus, type Experiment } from "../../../gen/recsys/experiment/v1/experiment_pb.js";
import { prepareDefinition } from "../definitions.js";

export type ExperimentInit = Exclude<MessageInitShape<typeof ExperimentSchema>, Experiment>;

/** A running 50/50 experiment in its own layer, overridable field by field. */
export function experimentInit(id: string, overrides: Partial<ExperimentInit> = {}): ExperimentInit {
  return {
    id,
    layer: id,
    status: ExperimentStatus.RUNNING,
    primaryMetric: "conversion",
    variants: [
      { name: "control", allocation: 0.5, config: { modelVersion: "v1" } },
      { name: "treatment", allocation: 0.5, config: { modelVersion: "v2", ensembleWeights: { "ranker-gbdt": 0.7 } } },
    ],
    ...overrides,
  };
}

/** A definition as the server would store it (buckets planned), on top of `stored`. */
export function stored(init: ExperimentInit, previous?: Experiment, others: Experiment[] = []): Experiment {
  return prepareDefinition(create(ExperimentSchema, init), previous, others);
}

export const userIds = (count: number, prefix = "user-") => Array.from({ length: count }, (_, i) => `${prefix}${i}`);
