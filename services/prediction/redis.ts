import { createRedis, type RedisClient, type RedisSettings } from "../kit/redis.js";

/**
 * A Redis client (single node or cluster, by the settings) that fails fast: no
 * offline queue, no resends, a timeout per command, reconnecting in the background.
 * Every Redis read of the service is optional (a miss or an older copy serves
 * instead), so a slow or absent Redis must cost a request at most
 * `commandTimeoutMs`, never a hang.
 */
export function failFastRedis(settings: RedisSettings, commandTimeoutMs: number, name: string): RedisClient {
  return createRedis(settings, { commandTimeoutMs, maxRetriesPerRequest: 0, name });
}
