import type { ChainableCommander } from "ioredis";
import { Code, statusError } from "../kit/index.js";
import { createRedis, type RedisClient, type RedisSettings } from "../kit/redis.js";
import { featureScripts } from "./lua.js";

export { waitUntilReady, type RedisClient } from "../kit/redis.js";

/** A client of the kit's (single node or cluster, fail-fast) with the feature service's Lua scripts registered. */
export function connectRedis(
  settings: RedisSettings & { REDIS_COMMAND_TIMEOUT_MS: number },
  options: { commandTimeoutMs?: number; name?: string } = {},
): RedisClient {
  return createRedis(settings, { commandTimeoutMs: options.commandTimeoutMs ?? settings.REDIS_COMMAND_TIMEOUT_MS, name: options.name, scripts: featureScripts });
}

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
  return statusError(Code.Unavailable, "FEATURE_STORE_UNAVAILABLE", `feature store (Redis) unavailable: ${message}`);
}
