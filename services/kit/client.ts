import type { DescService } from "@bufbuild/protobuf";
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { context, propagation } from "@opentelemetry/api";

/** Writes the active trace context (traceparent) into outgoing request headers. */
const propagateTrace: Interceptor = (next) => (req) => {
  propagation.inject(context.active(), req.header, { set: (headers, key, value) => headers.set(key, value) });
  return next(req);
};

/**
 * A typed gRPC client for a service at host:port (in the mesh: the caller's
 * sidecar egress listener). Pass timeoutMs per call, from the caller's Deadline,
 * so the remaining budget travels downstream as grpc-timeout.
 */
export function createServiceClient<S extends DescService>(service: S, address: string): Client<S> {
  const baseUrl = address.includes("://") ? address : `http://${address}`;
  return createClient(service, createGrpcTransport({ baseUrl, interceptors: [propagateTrace] }));
}
