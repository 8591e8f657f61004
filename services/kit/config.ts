import { z } from "zod";

/**
 * Settings every service shares. Each service extends this with its own fields
 * and loads the result once at start with loadConfig.
 */
export const baseConfigShape = {
  HOST: z.string().default("127.0.0.1"),
  GRPC_PORT: z.coerce.number().int().min(0).max(65535).default(0),
  /** Connect + gRPC-web listener for browsers; unset means none. */
  CONNECT_PORT: z.coerce.number().int().min(0).max(65535).optional(),
  /** Prometheus /metrics over HTTP; unset means none. */
  METRICS_PORT: z.coerce.number().int().min(0).max(65535).optional(),
  LOG_LEVEL: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]).default("info"),
  /**
   * A static bearer token that admin RPCs accept, for operators; no default, so no
   * deployment carries a known secret. Admin JWTs (JWKS_PATH) are the usual way.
   */
  ADMIN_TOKEN: z.string().min(8).optional(),
  /** The JWKS whose keys sign admin tokens (the edge's; npm run token mints dev ones). */
  JWKS_PATH: z.string().min(1).optional(),
  /**
   * After SIGTERM, how long the server keeps serving while health says NOT_SERVING,
   * so Envoy's active health check (1 s interval, 2 failures) takes it out of rotation
   * before it stops accepting calls.
   */
  DRAIN_MS: z.coerce.number().int().min(0).default(3_000),
  /** How long shutdown waits for in-flight calls before forcing the server down. */
  SHUTDOWN_GRACE_MS: z.coerce.number().int().min(0).default(10_000),
  OTEL_EXPORTER_OTLP_ENDPOINT: z.string().url().optional(),
  /** Zipkin's span API, e.g. http://127.0.0.1:19411/api/v2/spans (what `npm run observe` runs). */
  OTEL_EXPORTER_ZIPKIN_ENDPOINT: z.string().url().optional(),
};

export class ConfigError extends Error {
  override name = "ConfigError";
}

/**
 * Parses env into a typed config, or throws a ConfigError listing every bad
 * variable with what was wrong, so a typo fails the start instead of a request.
 */
export function loadConfig<S extends z.ZodRawShape>(
  shape: S,
  env: Record<string, string | undefined> = process.env,
): z.infer<z.ZodObject<S>> {
  const result = z.object(shape).safeParse(env);
  if (!result.success) {
    const problems = result.error.issues.map(
      (issue) => `  ${issue.path.join(".")}=${JSON.stringify(env[String(issue.path[0])] ?? "")}: ${issue.message}`,
    );
    throw new ConfigError(`invalid configuration:\n${problems.join("\n")}`);
  }
  return result.data;
}

export type BaseConfig = z.infer<z.ZodObject<typeof baseConfigShape>>;
