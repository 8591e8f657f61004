import type { ChainableCommander } from "ioredis";
import { Code, Reason, statusError } from "../kit/index.js";

/** Runs a MULTI (or pipeline) and returns its replies, throwing the first command error. */
export async function execAll(chain: ChainableCommander): Promise<unknown[]> {
  const replies = await chain.exec();
  if (!replies) throw new Error("Redis transaction aborted");
  return replies.map(([err, value]) => {
    if (err) throw err;
    return value;
  });
}

/** A Redis failure as the status callers see: UNAVAILABLE with a reason, never a hang. */
export function unavailable(err: unknown) {
  const message = err instanceof Error ? err.message : String(err);
  return statusError(Code.Unavailable, Reason.FeatureStoreUnavailable, `feature store (Redis) unavailable: ${message}`);
}
