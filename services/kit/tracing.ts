import { ROOT_CONTEXT, context, propagation, trace, type Context, type TextMapGetter } from "@opentelemetry/api";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-grpc";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { BatchSpanProcessor, NodeTracerProvider } from "@opentelemetry/sdk-trace-node";
import type { Metadata } from "@grpc/grpc-js";

let provider: NodeTracerProvider | undefined;

/**
 * Installs the tracer provider once per process: W3C trace context propagation and
 * async-context tracking always (so trace ids flow and can be reported), an OTLP
 * exporter only when an endpoint is configured. Sampling follows the standard
 * OTEL_TRACES_SAMPLER variables.
 */
export function initTracing(serviceName: string, otlpEndpoint?: string): void {
  if (provider) return;
  provider = new NodeTracerProvider({
    resource: resourceFromAttributes({ "service.name": serviceName }),
    spanProcessors: otlpEndpoint ? [new BatchSpanProcessor(new OTLPTraceExporter({ url: otlpEndpoint }))] : [],
  });
  provider.register({ propagator: new W3CTraceContextPropagator() });
}

export async function shutdownTracing(): Promise<void> {
  await provider?.shutdown();
}

export const tracer = () => trace.getTracer("recsys-mesh");

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

/** Trace id of the active span, or "" when there is none. */
export function activeTraceId(): string {
  const spanContext = trace.getSpan(context.active())?.spanContext();
  return spanContext && trace.isSpanContextValid(spanContext) ? spanContext.traceId : "";
}
