import { PredictionService } from "../../gen/recsys/prediction/v1/prediction_pb.js";
import { Code, ConnectError, implement, invalidArgument, Reason, requireAdmin, statusError } from "../kit/index.js";
import { ModelLoadError } from "./models.js";
import type { PredictionCache } from "./cache.js";
import type { PredictionConfig } from "./config.js";
import type { ModelStore } from "./model-store.js";
import type { Predictor } from "./predictor.js";
import { mirrorRole } from "./shadow.js";

export interface PredictionDeps {
  config: PredictionConfig;
  predictor: Predictor;
  cache: PredictionCache;
  store: ModelStore;
}

/** Response header naming the deployed version that answered (v1 | v2), for canary comparisons by callers. */
export const SERVICE_VERSION_HEADER = "x-service-version";

export function predictionService({ config, predictor, cache, store }: PredictionDeps) {
  return implement(PredictionService, {
    async predict(request, ctx) {
      ctx.responseHeader.set(SERVICE_VERSION_HEADER, config.SERVICE_VERSION);
      const role = mirrorRole(ctx.url);
      const mirror = role ? { role, requestId: ctx.requestHeader.get("x-request-id") ?? "" } : undefined;
      return predictor.predict(predictor.plan(request), ctx.timeoutMs(), "reject", mirror);
    },

    async predictBatch(request, ctx) {
      ctx.responseHeader.set(SERVICE_VERSION_HEADER, config.SERVICE_VERSION);
      // Every request is checked before any work starts, so a bad one costs nothing.
      const plans = request.requests.map((r, i) => predictor.plan(r, `requests[${i}].`));
      return { responses: await Promise.all(plans.map((plan) => predictor.predict(plan, ctx.timeoutMs(), "degrade"))) };
    },

    async invalidateCache(request, ctx) {
      requireAdmin(ctx.requestHeader, config);
      if (!request.all && request.userIds.length === 0) throw invalidArgument("user_ids", "name at least one user, or set all");
      try {
        const { l1Removed, l2Removed } = await cache.invalidate(request.all ? "all" : request.userIds);
        return { l1Removed: BigInt(l1Removed), l2Removed: BigInt(l2Removed) };
      } catch (err) {
        throw statusError(Code.Unavailable, Reason.CacheUnavailable, `the L2 prediction cache (Redis) did not answer: ${(err as Error).message}`);
      }
    },

    async reloadModels(_request, ctx) {
      requireAdmin(ctx.requestHeader, config);
      try {
        return { modelVersions: (await store.reload()).versions };
      } catch (err) {
        if (err instanceof ModelLoadError) throw statusError(Code.FailedPrecondition, Reason.ModelLoadFailed, `${err.message}; the current models keep serving`);
        throw err instanceof ConnectError ? err : new ConnectError("model reload failed", Code.Internal, undefined, undefined, err);
      }
    },
  });
}
