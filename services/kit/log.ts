import { pino, type Logger } from "pino";
import { activeSpanIds } from "./tracing.js";

export type { Logger };

/**
 * Every line logged inside a traced call carries its trace and span id (the names
 * OpenTelemetry's log data model uses), so a trace in Zipkin leads to its log lines
 * and a log line to its trace.
 */
function traceFields(): { trace_id?: string; span_id?: string } {
  const ids = activeSpanIds();
  return ids ? { trace_id: ids.traceId, span_id: ids.spanId } : {};
}

/**
 * Structured JSON logs on stdout. Request-level lines are debug; info carries only
 * lifecycle events, so the default level stays quiet under load.
 */
export function createLogger(service: string, level: string = process.env.LOG_LEVEL ?? "info"): Logger {
  return pino({ name: service, level, base: { service }, mixin: traceFields });
}
