// Signed-in callers of the mesh's edge, for the mesh tests. Anonymous callers share a
// small bucket per client address, so a test's load runs as a user of a tier, with a
// token signed by the key the mesh's edge trusts (.run/pki, which startMesh ensures).
import type { DescService } from "@bufbuild/protobuf";
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import type { Role } from "../../envoy/security.js";
import { localSigningKey, mintToken } from "../../scripts/lib/token.js";

/** Sends the token as `authorization: Bearer <token>` on every call. */
export const bearer =
  (token: string): Interceptor =>
  (next) =>
  (req) => {
    req.header.set("authorization", `Bearer ${token}`);
    return next(req);
  };

/** Mints tokens the mesh's edge accepts, valid for an hour (enterprise users unless told). */
export async function edgeTokenMinter(): Promise<(user: string, tier?: string, role?: Role) => string> {
  const key = await localSigningKey();
  return (user, tier = "enterprise", role = "user") => mintToken({ user, tier, role, ttlSeconds: 3600 }, key);
}

/** A gRPC client of a service through the edge (host:port), as the token's user; anonymous without one. */
export function edgeClient<S extends DescService>(service: S, edge: string, token?: string): Client<S> {
  return createClient(service, createGrpcTransport({ baseUrl: `http://${edge}`, interceptors: token ? [bearer(token)] : [] }));
}
