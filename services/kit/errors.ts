import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { create } from "@bufbuild/protobuf";
import { Reason } from "./reasons.js";

export { Code, ConnectError };

/**
 * Builds a gRPC status error with a machine-readable reason (google.rpc.ErrorInfo),
 * so callers branch on the reason, not on the message text.
 */
export function statusError(code: Code, reason: Reason, message: string, metadata: Record<string, string> = {}): ConnectError {
  return new ConnectError(message, code, undefined, [
    { desc: ErrorInfoSchema, value: create(ErrorInfoSchema, { reason, domain: "recsys", metadata }) },
  ]);
}

/** INVALID_ARGUMENT naming the field. */
export function invalidArgument(field: string, message: string): ConnectError {
  return statusError(Code.InvalidArgument, Reason.InvalidArgument, `${field}: ${message}`, { field });
}

/** Any thrown value as a ConnectError; unknown errors become INTERNAL without leaking details. */
export function asConnectError(err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  return new ConnectError("internal error", Code.Internal, undefined, undefined, err);
}

/**
 * A request that could not be read: bytes that do not decode as the method's input
 * type, or a unary call without exactly one message. The kit's deserializers return
 * it instead of throwing, because grpc-js answers a throwing deserializer with
 * INTERNAL, which Envoy's outlier detection counts against the host.
 */
export class MalformedRequest {
  constructor(
    /** The input type ("recsys.echo.v1.EchoRequest") or the method path. */
    readonly subject: string,
    readonly problem: string,
  ) {}

  /** INVALID_ARGUMENT with BadRequest (field "(message)") and ErrorInfo MALFORMED_REQUEST. */
  toError(): ConnectError {
    return new ConnectError(`malformed request: ${this.subject}: ${this.problem}`, Code.InvalidArgument, undefined, [
      { desc: BadRequestSchema, value: create(BadRequestSchema, { fieldViolations: [{ field: "(message)", description: this.problem, reason: Reason.MalformedRequest }] }) },
      { desc: ErrorInfoSchema, value: create(ErrorInfoSchema, { reason: Reason.MalformedRequest, domain: "recsys", metadata: { subject: this.subject } }) },
    ]);
  }
}
