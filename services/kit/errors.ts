import { Code, ConnectError } from "@connectrpc/connect";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { create } from "@bufbuild/protobuf";

export { Code, ConnectError };

/**
 * Builds a gRPC status error with a machine-readable reason (google.rpc.ErrorInfo),
 * so callers branch on the reason, not on the message text.
 */
export function statusError(code: Code, reason: string, message: string, metadata: Record<string, string> = {}): ConnectError {
  return new ConnectError(message, code, undefined, [
    { desc: ErrorInfoSchema, value: create(ErrorInfoSchema, { reason, domain: "recsys", metadata }) },
  ]);
}

/** INVALID_ARGUMENT naming the field. */
export function invalidArgument(field: string, message: string): ConnectError {
  return statusError(Code.InvalidArgument, "INVALID_ARGUMENT", `${field}: ${message}`, { field });
}

/** UNAUTHENTICATED unless the request carries "authorization: Bearer <token>". */
export function requireAdmin(requestHeader: Headers, token: string): void {
  const header = requestHeader.get("authorization") ?? "";
  if (header !== `Bearer ${token}`) {
    throw statusError(Code.Unauthenticated, "ADMIN_TOKEN_REQUIRED", "admin call: missing or wrong bearer token");
  }
}

/** Any thrown value as a ConnectError; unknown errors become INTERNAL without leaking details. */
export function asConnectError(err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  return new ConnectError("internal error", Code.Internal, undefined, undefined, err);
}
