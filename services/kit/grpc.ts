import * as grpc from "@grpc/grpc-js";
import {
  create,
  fromBinary,
  isMessage,
  toBinary,
  type DescMessage,
  type DescMethod,
  type DescService,
  type MessageShape,
} from "@bufbuild/protobuf";
import { Code, ConnectError, createContextValues, type ContextValues, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import { SpanKind, SpanStatusCode, context, trace } from "@opentelemetry/api";
import { MalformedRequest, asConnectError } from "./errors.js";
import type { Logger } from "./log.js";
import { rpcHandled, rpcHandlingSeconds } from "./metrics.js";
import { extractContext, traceresponseOf, tracer } from "./tracing.js";
import { validationError } from "./validation.js";

/**
 * A service description and its full typed implementation. The implementation is
 * Connect's ServiceImpl, so a missing method is a compile error and the same object
 * serves both the grpc-js listener and the Connect/gRPC-web listener.
 */
export interface ServiceRegistration {
  service: DescService;
  impl: ServiceImpl<DescService>;
}

export function implement<S extends DescService>(service: S, impl: ServiceImpl<S>): ServiceRegistration {
  return { service, impl: impl as unknown as ServiceImpl<DescService> };
}

function serializer(schema: DescMessage) {
  return (value: unknown) =>
    Buffer.from(toBinary(schema, isMessage(value, schema) ? value : create(schema, value as never)));
}

/** Never throws: undecodable bytes become a MalformedRequest the pipeline answers with INVALID_ARGUMENT. */
function deserializer(schema: DescMessage) {
  return (bytes: Buffer) => {
    try {
      return fromBinary(schema, bytes);
    } catch (err) {
      return new MalformedRequest(schema.typeName, err instanceof Error ? err.message : String(err));
    }
  };
}

/**
 * A service definition from another library (health, reflection) whose request
 * deserializers return a MalformedRequest instead of throwing, for the request guard.
 */
export function tolerantDefinition(definition: grpc.ServiceDefinition): grpc.ServiceDefinition {
  const tolerant = ([name, method]: [string, grpc.MethodDefinition<unknown, unknown>]) => {
    const requestDeserialize = (bytes: Buffer) => {
      try {
        return method.requestDeserialize(bytes);
      } catch (err) {
        return new MalformedRequest(method.path, err instanceof Error ? err.message : String(err));
      }
    };
    return [name, { ...method, requestDeserialize }];
  };
  return Object.fromEntries(Object.entries(definition).map(tolerant));
}

/** grpc-js metadata as Fetch Headers; binary values base64 as on the wire. */
function headersFrom(metadata: grpc.Metadata): [string, string][] {
  const out: [string, string][] = [];
  for (const [key, value] of Object.entries(metadata.getMap())) {
    out.push([key, typeof value === "string" ? value : value.toString("base64")]);
  }
  return out;
}

function metadataFrom(headers: Headers, into = new grpc.Metadata()): grpc.Metadata {
  headers.forEach((value, key) => {
    if (key.endsWith("-bin")) into.add(key, Buffer.from(value, "base64"));
    else into.add(key, value);
  });
  return into;
}

/** A ConnectError as a grpc-js status, google.rpc.Status details included. */
export function toServiceError(err: ConnectError, trailer: Headers): grpc.StatusObject {
  return toServiceErrorWith(err, metadataFrom(trailer));
}

function toServiceErrorWith(err: ConnectError, metadata: grpc.Metadata): grpc.StatusObject {
  const details = setTrailerStatus(new Headers(), err).get("grpc-status-details-bin");
  if (details) metadata.set("grpc-status-details-bin", Buffer.from(details, "base64"));
  return { code: err.code as number as grpc.status, details: err.rawMessage, metadata };
}

async function* validated(method: DescMethod, requests: AsyncIterable<unknown>): AsyncIterable<MessageShape<DescMessage>> {
  for await (const request of requests) {
    if (request instanceof MalformedRequest) throw request.toError();
    const message = request as MessageShape<DescMessage>;
    const invalid = validationError(method.input, message);
    if (invalid) throw invalid;
    yield message;
  }
}

type AnyCall = grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerReadableStream<unknown, unknown>;

/**
 * Connect's HandlerContext for a grpc-js call, built on first use: connect's
 * createHandlerContext makes three AbortControllers, a deadline timer, a
 * ConnectError and three Headers for every call, which most handlers never touch
 * (issue 16's profile). The signal aborts when the caller cancels or the deadline passes.
 */
class GrpcHandlerContext implements HandlerContext {
  readonly requestMethod = "POST";
  readonly protocolName = "grpc";
  private readonly deadlineMs: number | undefined;
  private controller: AbortController | undefined;
  private deadlineTimer: NodeJS.Timeout | undefined;
  private cancelled: ConnectError | undefined;
  private lazyRequestHeader: Headers | undefined;
  private lazyResponseHeader: Headers | undefined;
  private lazyResponseTrailer: Headers | undefined;
  private lazyValues: ContextValues | undefined;
  private finished = false;

  constructor(
    readonly service: DescService,
    readonly method: DescMethod,
    private readonly path: string,
    private readonly call: AnyCall,
  ) {
    const deadline = call.getDeadline();
    const deadlineMs = deadline instanceof Date ? deadline.getTime() : deadline;
    this.deadlineMs = Number.isFinite(deadlineMs) ? deadlineMs : undefined;
    // grpc-js reports "cancelled" after every call's status too; only one before it is the caller's.
    call.once("cancelled", () => {
      if (!this.finished) this.abort(new ConnectError("cancelled by the client", Code.Canceled));
    });
  }

  get signal(): AbortSignal {
    if (!this.controller) {
      this.controller = new AbortController();
      if (this.cancelled) this.controller.abort(this.cancelled);
      else if (this.deadlineMs !== undefined) {
        const timedOut = () => this.abort(new ConnectError("the operation timed out", Code.DeadlineExceeded));
        this.deadlineTimer = setTimeout(timedOut, Math.max(0, this.deadlineMs - Date.now()));
      }
    }
    return this.controller.signal;
  }

  /** Whether the call was cancelled or timed out, without creating a signal. */
  get aborted(): ConnectError | undefined {
    if (this.cancelled) return this.cancelled;
    if (this.deadlineMs !== undefined && Date.now() >= this.deadlineMs) return new ConnectError("the operation timed out", Code.DeadlineExceeded);
    return undefined;
  }

  readonly timeoutMs = (): number | undefined => (this.deadlineMs === undefined ? undefined : Math.max(0, this.deadlineMs - Date.now()));

  /** As connect-node gives it: the request's authority and path (built when asked). */
  get url(): string {
    return `http://${this.call.getHost()}${this.path}`;
  }

  get requestHeader(): Headers {
    return (this.lazyRequestHeader ??= new Headers(headersFrom(this.call.metadata)));
  }

  get responseHeader(): Headers {
    return (this.lazyResponseHeader ??= new Headers());
  }

  get responseTrailer(): Headers {
    return (this.lazyResponseTrailer ??= new Headers());
  }

  get values(): ContextValues {
    return (this.lazyValues ??= createContextValues());
  }

  /** Response headers the handler set, as metadata; undefined when it set none. */
  headerMetadata(): grpc.Metadata | undefined {
    const header = this.lazyResponseHeader;
    return header && [...header.keys()].length > 0 ? metadataFrom(header) : undefined;
  }

  /** The handler's trailers plus `extra`, as metadata. */
  trailerMetadata(extra: Record<string, string>): grpc.Metadata {
    const metadata = this.lazyResponseTrailer ? metadataFrom(this.lazyResponseTrailer) : new grpc.Metadata();
    for (const [key, value] of Object.entries(extra)) metadata.set(key, value);
    return metadata;
  }

  abort(reason: ConnectError): void {
    this.cancelled ??= reason;
    this.controller?.abort(reason);
    this.finish();
  }

  finish(): void {
    this.finished = true;
    clearTimeout(this.deadlineTimer);
  }
}

/**
 * Builds the grpc-js definition and handlers for one service. Every call runs the
 * same pipeline, in this order: trace context extraction and a server span ->
 * handler context with the caller's deadline -> decoding and protovalidate (a
 * MalformedRequest or a rule violation is INVALID_ARGUMENT) -> the implementation
 * -> status mapping (unknown errors become INTERNAL, logged with their cause) ->
 * metrics by code.
 */
export function grpcService(registration: ServiceRegistration, log: Logger) {
  const { service, impl } = registration;
  const definition: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  const handlers: grpc.UntypedServiceImplementation = {};

  for (const method of service.methods) {
    const path = `/${service.typeName}/${method.name}`;
    const kind = method.methodKind;
    const labels = { grpc_service: service.typeName, grpc_method: method.name, grpc_type: kind === "unary" ? "unary" : "client_stream" };
    const methodImpl = (impl as Record<string, (...args: unknown[]) => unknown>)[method.localName];
    if (typeof methodImpl !== "function") throw new Error(`${service.typeName} has no implementation of ${method.name}`);
    // Our contracts use unary and client-streaming calls only; refusing the rest here
    // keeps the adapter small and a new streaming RPC from failing silently.
    if (kind !== "unary" && kind !== "client_streaming") {
      throw new Error(`${path}: ${kind} RPCs are not supported by the kit's grpc-js adapter`);
    }
    const clientStreams = kind === "client_streaming";

    definition[method.localName] = {
      path,
      requestStream: clientStreams,
      responseStream: false,
      requestSerialize: serializer(method.input),
      requestDeserialize: deserializer(method.input),
      responseSerialize: serializer(method.output),
      responseDeserialize: deserializer(method.output),
      originalName: method.name,
    };

    const run = async (call: AnyCall, ctx: HandlerContext): Promise<unknown> => {
      if (clientStreams) {
        return methodImpl.call(impl, validated(method, call as AsyncIterable<unknown>), ctx);
      }
      const received = (call as grpc.ServerUnaryCall<unknown, unknown>).request;
      if (received instanceof MalformedRequest) throw received.toError();
      const request = received as MessageShape<DescMessage>;
      const invalid = validationError(method.input, request);
      if (invalid) throw invalid;
      return methodImpl.call(impl, request, ctx);
    };

    const handle = (call: AnyCall, finish: (err: ConnectError | undefined, value: unknown, trailer: grpc.Metadata) => void) => {
      const started = performance.now();
      const ctx = new GrpcHandlerContext(service, method, path, call);
      const span = tracer().startSpan(
        path.slice(1),
        { kind: SpanKind.SERVER, attributes: { "rpc.system": "grpc", "rpc.service": service.typeName, "rpc.method": method.name } },
        extractContext(call.metadata),
      );
      // W3C traceresponse, so a caller can find this request's trace.
      const traceresponse = traceresponseOf(span.spanContext());
      const done = (err: ConnectError | undefined, value: unknown) => {
        ctx.finish();
        const code = err ? Code[err.code] : "OK";
        rpcHandled.inc({ ...labels, grpc_code: grpcCodeName(err?.code) });
        rpcHandlingSeconds.observe(labels, (performance.now() - started) / 1000);
        if (err) {
          span.setStatus({ code: SpanStatusCode.ERROR, message: err.rawMessage });
          if (err.code === Code.Internal || err.code === Code.Unknown) {
            log.error({ method: path, err: err.cause ?? err }, "rpc failed");
          } else {
            log.debug({ method: path, code, message: err.rawMessage }, "rpc error");
          }
        }
        span.end();
        const header = ctx.headerMetadata();
        if (header) call.sendMetadata(header);
        finish(err, value, ctx.trailerMetadata({ traceresponse }));
      };
      context.with(trace.setSpan(context.active(), span), () => {
        run(call, ctx).then(
          (value) => done(undefined, value),
          // A handler that stopped because the caller cancelled or its deadline passed
          // reports that, not an INTERNAL error with an AbortError's stack.
          (reason: unknown) => done(ctx.aborted ?? asConnectError(reason), undefined),
        );
      });
    };

    handlers[method.localName] = (call: AnyCall, callback: grpc.sendUnaryData<unknown>) =>
      handle(call, (err, value, trailer) => {
        if (err) callback(toServiceErrorWith(err, trailer));
        else callback(null, value, trailer);
      });
  }
  return { definition, handlers };
}

function grpcCodeName(code: Code | undefined): string {
  return code === undefined ? "OK" : (grpc.status[code as number] ?? "UNKNOWN");
}
