import { pino, type Logger } from "pino";

export type { Logger };

/**
 * Structured JSON logs on stdout. Request-level lines are debug; info carries only
 * lifecycle events, so the default level stays quiet under load.
 */
export function createLogger(service: string, level: string = process.env.LOG_LEVEL ?? "info"): Logger {
  return pino({ name: service, level, base: { service } });
}
