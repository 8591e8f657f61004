import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Client } from "@connectrpc/connect";
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, ErrorInfoSchema } from "../../../gen/google/rpc/error_details_pb.js";
import { RetrievalService } from "../../../gen/recsys/retrieval/v1/retrieval_pb.js";
import { createServiceClient } from "../../kit/index.js";
import { startRetrievalService, type RetrievalServer } from "../server.js";

export function tempDir(prefix: string): string {
  return mkdtempSync(join(tmpdir(), `recsys-retrieval-${prefix}-`));
}

export async function startRetrieval(env: Record<string, string>): Promise<{ server: RetrievalServer; client: Client<typeof RetrievalService> }> {
  const server = await startRetrievalService({ GRPC_PORT: "0", LOG_LEVEL: "silent", ...env });
  await server.ready;
  return { server, client: createServiceClient(RetrievalService, `127.0.0.1:${server.port}`) };
}

/** The error a call failed with; fails the test when it succeeded. */
export async function failure(call: Promise<unknown>): Promise<ConnectError> {
  try {
    await call;
  } catch (err) {
    return ConnectError.from(err);
  }
  throw new Error("expected the call to fail");
}

/** The field an INVALID_ARGUMENT names: protovalidate's BadRequest, or our ErrorInfo. */
export function invalidField(err: ConnectError): string | undefined {
  if (err.code !== Code.InvalidArgument) return undefined;
  return err.findDetails(BadRequestSchema)[0]?.fieldViolations[0]?.field ?? err.findDetails(ErrorInfoSchema)[0]?.metadata.field;
}

export function reason(err: ConnectError): string | undefined {
  return err.findDetails(ErrorInfoSchema)[0]?.reason;
}

export function recall(found: readonly string[], truth: readonly string[]): number {
  const expected = new Set(truth);
  return found.filter((id) => expected.has(id)).length / truth.length;
}
