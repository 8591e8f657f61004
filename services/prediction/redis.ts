import { Redis } from "ioredis";

/**
 * A Redis client that fails fast: no offline queue, no retries per command, a
 * timeout per command, reconnecting in the background. Every Redis read of the
 * service is optional (a miss or an older copy serves instead), so a slow or absent
 * Redis must cost a request at most `commandTimeoutMs`, never a hang.
 */
export function failFastRedis(url: string, commandTimeoutMs: number): Redis {
  return new Redis(url, {
    commandTimeout: commandTimeoutMs,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    retryStrategy: reconnectDelay,
  });
}

/** Back off to at most 2 s between reconnection attempts. */
export const reconnectDelay = (attempt: number) => Math.min(attempt * 200, 2000);
