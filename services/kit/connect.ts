import type { RequestListener } from "node:http";
import type { DescMethod } from "@bufbuild/protobuf";
import { Code, ConnectError, createContextKey, createContextValues, type Interceptor } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { createAsyncIterable, encodeEnvelope, type UniversalHandler, type UniversalServerRequest, type UniversalServerResponse } from "@connectrpc/connect/protocol";
import { codeToHttpStatus, errorFromJsonBytes, errorToJsonBytes } from "@connectrpc/connect/protocol-connect";
import { findTrailerError, setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import { trailerFlag, trailerParse, trailerSerialize } from "@connectrpc/connect/protocol-grpc-web";
import { MalformedRequest, asConnectError } from "./errors.js";
import type { ServiceRegistration } from "./grpc.js";
import { validationError } from "./validation.js";
import { SpanKind, SpanStatusCode, context, trace } from "@opentelemetry/api";
import { extractContextFromHeaders, traceresponseOf, tracer } from "./tracing.js";

/**
 * The codes connect-es gives a request it could not read: "parse binary: ..." is
 * INTERNAL (protocol/serialization.js), a unary call with no or two messages is
 * UNIMPLEMENTED (protocol/invoke-implementation.js ensureSingle), a compressed
 * envelope without an encoding is INTERNAL. All of them are the client's bad input.
 */
const unreadableCodes = new Set([Code.Internal, Code.Unimplemented, Code.Unknown]);

/** Set by the interceptor: the request reached our code, so connect read it. */
const readKey = createContextKey({ read: false }, { description: "recsys request was read" });

function malformed(method: DescMethod, err: unknown): ConnectError {
  const error = ConnectError.from(err);
  return unreadableCodes.has(error.code) ? new MalformedRequest(method.input.typeName, error.rawMessage).toError() : error;
}

/** Validates every request message, the same rules as the grpc-js path; streamed messages one by one. */
const validateInterceptor: Interceptor = (next) => async (req) => {
  req.contextValues.get(readKey).read = true;
  if (!req.stream) {
    const invalid = validationError(req.method.input, req.message);
    if (invalid) throw invalid;
    return next(req);
  }
  const { method, message: messages } = req;
  async function* validated() {
    const it = messages[Symbol.asyncIterator]();
    for (;;) {
      const result = await it.next().catch((err: unknown) => {
        throw malformed(method, err);
      });
      if (result.done) return;
      const invalid = validationError(method.input, result.value);
      if (invalid) throw invalid;
      yield result.value;
    }
  }
  return next({ ...req, message: validated() });
};

async function allBytes(body: AsyncIterable<Uint8Array> | undefined): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  for await (const chunk of body ?? []) chunks.push(chunk);
  return Buffer.concat(chunks);
}

/** The status in a gRPC-web body's trailer envelope, if any. */
function grpcWebTrailerError(body: Uint8Array): ConnectError | undefined {
  for (let offset = 0; offset + 5 <= body.length; ) {
    const length = Buffer.from(body.buffer, body.byteOffset + offset + 1, 4).readUInt32BE(0);
    if ((body[offset]! & trailerFlag) === trailerFlag) return findTrailerError(trailerParse(body.subarray(offset + 5, offset + 5 + length)));
    offset += 5 + length;
  }
  return undefined;
}

/**
 * A request that failed before reaching our interceptor with one of the codes
 * connect-es gives unreadable input is answered again, in the same protocol, as
 * INVALID_ARGUMENT with the same message. connect-es offers no hook for its parse
 * errors, which it raises before interceptors run.
 */
async function answerUnreadable(method: DescMethod, req: UniversalServerRequest, res: UniversalServerResponse): Promise<UniversalServerResponse> {
  const contentType = req.header.get("content-type") ?? "";
  const body = await allBytes(res.body);
  const unchanged = { ...res, body: createAsyncIterable([body]) };
  if (contentType.startsWith("application/grpc-web")) {
    const error = grpcWebTrailerError(body);
    if (!error || !unreadableCodes.has(error.code)) return unchanged;
    const trailer = setTrailerStatus(new Headers(), malformed(method, error));
    return { ...res, body: createAsyncIterable([encodeEnvelope(trailerFlag, trailerSerialize(trailer))]) };
  }
  if (contentType.startsWith("application/grpc")) {
    const error = res.trailer && findTrailerError(res.trailer);
    if (!error || !unreadableCodes.has(error.code)) return unchanged;
    return { ...res, body: createAsyncIterable([body]), trailer: setTrailerStatus(new Headers(), malformed(method, error)) };
  }
  if (res.status < 400 || !res.header?.get("content-type")?.startsWith("application/json")) return unchanged;
  const error = errorFromJsonBytes(body, undefined, new ConnectError("unreadable error body", Code.Unknown));
  if (!unreadableCodes.has(error.code)) return unchanged;
  const answer = malformed(method, error);
  const json = errorToJsonBytes(answer, undefined);
  const header = new Headers(res.header);
  header.set("content-length", String(json.byteLength));
  return { status: codeToHttpStatus(answer.code), header, body: createAsyncIterable([json]) };
}

/**
 * The same trace step as the grpc-js path: W3C context from the request headers, a
 * server span around the handler (so handlers see the trace id), and traceresponse
 * in the answer, success or error.
 */
const traceInterceptor: Interceptor = (next) => async (req) => {
  const span = tracer().startSpan(
    `${req.service.typeName}/${req.method.name}`,
    { kind: SpanKind.SERVER, attributes: { "rpc.system": "connect_rpc", "rpc.service": req.service.typeName, "rpc.method": req.method.name } },
    extractContextFromHeaders(req.header),
  );
  const traceresponse = traceresponseOf(span.spanContext());
  try {
    const res = await context.with(trace.setSpan(context.active(), span), () => next(req));
    res.header.set("traceresponse", traceresponse);
    return res;
  } catch (err) {
    const error = asConnectError(err);
    span.setStatus({ code: SpanStatusCode.ERROR, message: error.rawMessage });
    error.metadata.set("traceresponse", traceresponse);
    throw error;
  } finally {
    span.end();
  }
};

function answeringUnreadable(handler: UniversalHandler): UniversalHandler {
  const wrapped = async (req: UniversalServerRequest) => {
    const res = await handler(req);
    return req.contextValues?.get(readKey).read ? res : answerUnreadable(handler.method, req, res);
  };
  return Object.assign(wrapped, handler);
}

/**
 * The Connect/gRPC-web listener's request handler (connect-node): the same
 * implementations and validation as the grpc-js path, and a client's unreadable
 * body answered with INVALID_ARGUMENT, never INTERNAL or UNIMPLEMENTED.
 */
export function connectRequestHandler(services: ServiceRegistration[]): RequestListener {
  return connectNodeAdapter({
    routes: (router) => {
      services.forEach(({ service, impl }) => router.service(service, impl));
      router.handlers.splice(0, router.handlers.length, ...router.handlers.map(answeringUnreadable));
    },
    interceptors: [traceInterceptor, validateInterceptor],
    contextValues: () => createContextValues().set(readKey, { read: false }),
  });
}
