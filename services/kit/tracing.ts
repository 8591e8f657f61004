import { ROOT_CONTEXT, context, propagation, trace, type Context, type SpanContext, type TextMapGetter, type Tracer } from "@opentelemetry/api";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-grpc";
import { ZipkinExporter } from "@opentelemetry/exporter-zipkin";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { BatchSpanProcessor, NodeTracerProvider, type SpanProcessor } from "@opentelemetry/sdk-trace-node";
import type { Metadata } from "@grpc/grpc-js";
import { z } from "zod";
import { baseConfigShape, loadConfig } from "./config.js";

let provider: NodeTracerProvider | undefined;

/**
 * Where spans go, from the standard OpenTelemetry variables. Neither endpoint set:
 * spans are made (trace ids flow and are reported) and dropped, at no export cost.
 * Sampling is the SDK's own OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG, by default
 * parentbased_always_on: behind a sidecar every call has a parent, so Envoy's
 * sampling decision (random_sampling in the rendered configs) is the one that counts.
 */
export const tracingConfigShape = {
  OTEL_EXPORTER_ZIPKIN_ENDPOINT: baseConfigShape.OTEL_EXPORTER_ZIPKIN_ENDPOINT,
  SERVICE_VERSION: z.string().min(1).optional(),
};

function exporters(otlpEndpoint: string | undefined, zipkinEndpoint: string | undefined): SpanProcessor[] {
  const processors: SpanProcessor[] = [];
  if (otlpEndpoint) processors.push(new BatchSpanProcessor(new OTLPTraceExporter({ url: otlpEndpoint })));
  if (zipkinEndpoint) processors.push(new BatchSpanProcessor(new ZipkinExporter({ url: zipkinEndpoint })));
  return processors;
}

/**
 * Installs the tracer provider once per process: W3C trace context propagation and
 * async-context tracking always, exporters only for the endpoints configured
 * (the service config's OTLP endpoint, tracingConfigShape's Zipkin endpoint).
 */
export function initTracing(serviceName: string, otlpEndpoint?: string, env: Record<string, string | undefined> = process.env): void {
  if (provider) return;
  const config = loadConfig(tracingConfigShape, env);
  provider = new NodeTracerProvider({
    resource: resourceFromAttributes({ "service.name": serviceName, ...(config.SERVICE_VERSION ? { "service.version": config.SERVICE_VERSION } : {}) }),
    spanProcessors: exporters(otlpEndpoint, config.OTEL_EXPORTER_ZIPKIN_ENDPOINT),
  });
  provider.register({ propagator: new W3CTraceContextPropagator() });
}

/** Sends the spans still buffered, then stops exporting. */
export async function shutdownTracing(): Promise<void> {
  await provider?.shutdown();
}

let serviceTracer: Tracer | undefined;
/**
 * The process's tracer, looked up once: the API's lookup builds a key and walks the
 * provider's map on every call. Taken before initTracing it is the API's proxy, which
 * hands over to the provider once one is registered.
 */
export const tracer = (): Tracer => (serviceTracer ??= trace.getTracer("recsys-mesh"));

const metadataGetter: TextMapGetter<Metadata> = {
  keys: (carrier) => Object.keys(carrier.getMap()),
  get: (carrier, key) => carrier.get(key).map(String),
};

/** The caller's trace context from gRPC metadata (traceparent, tracestate). */
export function extractContext(metadata: Metadata): Context {
  return propagation.extract(ROOT_CONTEXT, metadata, metadataGetter);
}

/** The W3C trace context of HTTP headers (the Connect and gRPC-web listener). */
export function extractContextFromHeaders(headers: Headers): Context {
  return propagation.extract(ROOT_CONTEXT, headers, { keys: (h) => [...h.keys()], get: (h, key) => h.get(key) ?? undefined });
}

/**
 * The W3C traceresponse of a server span: its trace and span id, and whether it was
 * sampled (a caller that sees 00 knows no trace of the call was recorded).
 */
export function traceresponseOf({ traceId, spanId, traceFlags }: SpanContext): string {
  return `00-${traceId}-${spanId}-${(traceFlags & 0xff).toString(16).padStart(2, "0")}`;
}

/** Trace and span id of the active span, or undefined when there is none. */
export function activeSpanIds(): { traceId: string; spanId: string } | undefined {
  const spanContext = trace.getSpan(context.active())?.spanContext();
  return spanContext && trace.isSpanContextValid(spanContext) ? { traceId: spanContext.traceId, spanId: spanContext.spanId } : undefined;
}

/** Trace id of the active span, or "" when there is none. */
export function activeTraceId(): string {
  return activeSpanIds()?.traceId ?? "";
}
