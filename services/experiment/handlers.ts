import type { HandlerContext } from "@connectrpc/connect";
import {
  ExperimentService,
  ExperimentStatus,
  type Experiment,
} from "../../gen/recsys/experiment/v1/experiment_pb.js";
import { Code, implement, invalidArgument, Reason, requireAdmin, statusError } from "../kit/index.js";
import type { Assigner } from "./assigner.js";
import type { ExperimentConfig } from "./config.js";
import { prepareDefinition } from "./definitions.js";
import { computeResults } from "./results.js";
import type { ExperimentStore, ExposureEvent, OutcomeEvent } from "./store.js";

/** Definition writes retry this often when another write lands between read and write. */
const WRITE_ATTEMPTS = 5;
const DEFAULT_ALPHA = 0.05;

export interface ExperimentDeps {
  config: Pick<ExperimentConfig, "ADMIN_TOKEN" | "JWKS_PATH" | "SEQUENTIAL_TAU">;
  store: ExperimentStore;
  /** The same in-process assigner the prediction service uses, on this process's cache. */
  assigner: Assigner;
}

function groupBy<T>(items: T[], key: (item: T) => string): Map<string, { item: T; index: number }[]> {
  const groups = new Map<string, { item: T; index: number }[]>();
  items.forEach((item, index) => {
    const group = groups.get(key(item));
    if (group) group.push({ item, index });
    else groups.set(key(item), [{ item, index }]);
  });
  return groups;
}

const variantNames = (experiment: Experiment) => experiment.variants.map((v) => v.name).join(", ");

export function experimentService({ config, store, assigner }: ExperimentDeps) {
  /** A definition from the cache, reloaded once when the id (or a variant) is not there yet. */
  const definition = async (id: string, variant?: string): Promise<Experiment | undefined> => {
    const cached = assigner.experiment(id);
    if (cached && (variant === undefined || cached.variants.some((v) => v.name === variant))) return cached;
    await assigner.refresh();
    return assigner.experiment(id);
  };

  /**
   * Validates and stores a definition with optimistic concurrency: the whole set of
   * definitions is read, checked (revision, layer overlaps) and written only if no
   * definition changed meanwhile; otherwise the check runs again on the new set.
   */
  const save = async (input: Experiment, mode: "create" | "update"): Promise<Experiment> => {
    for (let attempt = 0; attempt < WRITE_ATTEMPTS; attempt++) {
      const snapshot = await store.snapshot();
      const stored = snapshot.experiments.find((e) => e.id === input.id);
      if (mode === "create" && stored) {
        throw statusError(Code.AlreadyExists, Reason.ExperimentExists, `experiment "${input.id}" already exists (revision ${stored.revision}); use UpdateExperiment`);
      }
      if (mode === "update") {
        if (!stored) throw statusError(Code.NotFound, Reason.ExperimentNotFound, `no experiment "${input.id}"`);
        if (input.revision !== stored.revision) {
          throw statusError(
            Code.Aborted,
            Reason.StaleRevision,
            `experiment "${input.id}": revision ${input.revision} is stale, the stored one is ${stored.revision}; read it again and retry`,
          );
        }
      }
      const next = prepareDefinition(input, stored, snapshot.experiments);
      if ((await store.writeDefinition(next, snapshot.version)) !== undefined) {
        // This process answers Assign with the change at once; others hear the pub/sub notice.
        await assigner.refresh().catch(() => undefined);
        return next;
      }
    }
    throw statusError(Code.Aborted, Reason.ConcurrentChange, "experiment definitions kept changing during the write; retry");
  };

  const admin = (ctx: HandlerContext) => requireAdmin(ctx.requestHeader, config);

  return implement(ExperimentService, {
    async assign(request) {
      const forced = request.forcedVariants;
      if (Object.keys(forced).some((id) => !assigner.experiment(id))) await assigner.refresh();
      return assigner.assign(request.userId, request.context, forced);
    },

    async createExperiment(request, ctx) {
      admin(ctx);
      return { experiment: await save(request.experiment!, "create") };
    },

    async updateExperiment(request, ctx) {
      admin(ctx);
      return { experiment: await save(request.experiment!, "update") };
    },

    async listExperiments(request, ctx) {
      admin(ctx);
      const { experiments } = await store.snapshot();
      return {
        experiments: experiments
          .filter((e) => (!request.layer || e.layer === request.layer) && (request.status === ExperimentStatus.UNSPECIFIED || e.status === request.status))
          .sort((a, b) => (a.id < b.id ? -1 : 1)),
      };
    },

    async recordExposures(request) {
      for (const [index, exposure] of request.exposures.entries()) {
        const experiment = await definition(exposure.experimentId, exposure.variant);
        if (!experiment) throw invalidArgument(`exposures[${index}].experiment_id`, `no experiment "${exposure.experimentId}"`);
        if (!experiment.variants.some((v) => v.name === exposure.variant)) {
          throw invalidArgument(
            `exposures[${index}].variant`,
            `experiment "${experiment.id}" has no variant "${exposure.variant}" (variants: ${variantNames(experiment)})`,
          );
        }
      }
      let recorded = 0;
      for (const [experimentId, group] of groupBy(request.exposures, (e) => e.experimentId)) {
        const events: ExposureEvent[] = group.map(({ item }) => ({ exposureId: item.exposureId, userId: item.userId, variant: item.variant }));
        recorded += await store.recordExposures(experimentId, events);
      }
      return { recorded, duplicates: request.exposures.length - recorded };
    },

    async recordOutcome(request) {
      for (const [index, outcome] of request.outcomes.entries()) {
        if (!(await definition(outcome.experimentId))) {
          throw invalidArgument(`outcomes[${index}].experiment_id`, `no experiment "${outcome.experimentId}"`);
        }
      }
      const unexposed = (index: number) => {
        const { userId, experimentId } = request.outcomes[index]!;
        return statusError(
          Code.FailedPrecondition,
          Reason.UserNotExposed,
          `outcomes[${index}].user_id: user "${userId}" was never exposed to experiment "${experimentId}"; record the exposure first (nothing in this request was recorded)`,
          { field: `outcomes[${index}].user_id` },
        );
      };
      const groups = groupBy(request.outcomes, (o) => o.experimentId);
      // Each group is recorded all or none by one script; with several experiments,
      // check every user first so a refusal leaves nothing recorded.
      if (groups.size > 1) {
        for (const [experimentId, group] of groups) {
          const variants = await store.exposedVariants(experimentId, group.map(({ item }) => item.userId));
          const missing = variants.findIndex((v) => v === undefined);
          if (missing >= 0) throw unexposed(group[missing]!.index);
        }
      }
      let recorded = 0;
      for (const [experimentId, group] of groups) {
        const events: OutcomeEvent[] = group.map(({ item }) => ({ outcomeId: item.outcomeId, userId: item.userId, metric: item.metric, value: item.value }));
        const result = await store.recordOutcomes(experimentId, events);
        if ("unexposed" in result) throw unexposed(group[result.unexposed]!.index);
        recorded += result.recorded;
      }
      return { recorded, duplicates: request.outcomes.length - recorded };
    },

    async getResults(request) {
      const experiment = await definition(request.experimentId);
      if (!experiment) throw statusError(Code.NotFound, Reason.ExperimentNotFound, `no experiment "${request.experimentId}"`);
      const metric = request.metric || experiment.primaryMetric;
      if (!metric) throw invalidArgument("metric", `experiment "${experiment.id}" has no primary_metric; name the metric`);
      const aggregates = await store.aggregates(experiment.id, metric);
      return computeResults(experiment, metric, request.alpha || DEFAULT_ALPHA, config.SEQUENTIAL_TAU, aggregates);
    },
  });
}
