// Envoy building blocks for who may call what (issue 15), in Envoy v3 API shape like
// envoy/render.ts: identity from verified JWTs at the edge, RBAC per access
// class (envoy/access.ts), a global rate limit per tier and user (envoyproxy/ratelimit),
// a CORS allow-list, and mTLS between every Envoy with certificates from files that
// Envoy watches (SDS), so a rotated certificate is used without a restart.
import { accessTable, infraPaths, methodPath, pathsOf } from "./access.js";
import { JWT_AUDIENCE as jwtAudience, JWT_ISSUER as jwtIssuer } from "../services/kit/auth.js";
import { localPorts, services } from "./topology.js";

type Obj = Record<string, unknown>;
const type = (name: string) => `type.googleapis.com/${name}`;
const ms = (n: number) => `${n / 1000}s`;

/** SPIFFE-style identities: one per service (all its versions) and one for the edge. */
export const trustDomain = "recsys.local";
export const edgeIdentity = "edge";
export const spiffeId = (name: string) => `spiffe://${trustDomain}/ns/recsys/sa/${name}`;
export const meshIdentities = (): string[] => [edgeIdentity, ...services.map((s) => s.name)];

/** The edge accepts tokens from this issuer for this audience (scripts/token.ts mints them; the apps check the same). */
export { JWT_ISSUER as jwtIssuer, JWT_AUDIENCE as jwtAudience } from "../services/kit/auth.js";
const jwtProvider = "recsys";
const jwtFilter = "envoy.filters.http.jwt_authn";
/** Where jwt_authn puts the verified payload in dynamic metadata (RBAC reads the role there). */
const jwtPayloadKey = "jwt_payload";
/**
 * Verified tokens each edge worker thread keeps (LRU): the callers active at once. A few
 * KB each, so at most a few tens of MB of the edge's 400 MB heap.
 */
const jwtCacheSize = 4_096;

/** Headers the edge sets from a verified token's claims; the apps and the rate limit read them. */
export const claimHeaders = { user: "x-recsys-user", tier: "x-recsys-tier", role: "x-recsys-role" } as const;
/** What a client might send to claim an identity: removed before the token is read. */
export const clientIdentityHeaders = ["x-user-tier", ...Object.values(claimHeaders)];

/** Roles a token may carry; only the edge's RBAC and the apps give them meaning. */
export const roles = ["user", "service", "admin"] as const;
export type Role = (typeof roles)[number];

/** The rate limit service's domain and descriptor keys; scripts/lib/ratelimit.ts renders its limits. */
export const rateLimitDomain = "recsys-edge";
export const anonymousTier = "anonymous";
export const descriptorKeys = { tier: "tier", user: "user", clientAddress: "remote_address" } as const;

/** A secret Envoy reads from a file and reloads when a file is moved into its directory. */
export interface SdsFile {
  /** The secret's name inside the file. */
  name: string;
  path: string;
  /** Watched for moves: scripts/lib/pki.ts renames new files into it atomically. */
  directory: string;
}

function sdsSecret(file: SdsFile): Obj {
  return {
    name: file.name,
    sds_config: { path_config_source: { path: file.path, watched_directory: { path: file.directory } }, resource_api_version: "V3" },
  };
}

const sanMatchers = (ids: string[]) => ids.map((id) => ({ san_type: "URI", matcher: { exact: spiffeId(id) } }));

function commonTls(identity: SdsFile, trust: SdsFile, peers: string[], alpn: string[]): Obj {
  return {
    // Envoy's client side defaults to at most TLS 1.2: both ends name 1.3.
    tls_params: { tls_minimum_protocol_version: "TLSv1_3", tls_maximum_protocol_version: "TLSv1_3" },
    alpn_protocols: alpn,
    tls_certificate_sds_secret_configs: [sdsSecret(identity)],
    combined_validation_context: {
      default_validation_context: { match_typed_subject_alt_names: sanMatchers(peers) },
      validation_context_sds_secret_config: sdsSecret(trust),
    },
  };
}

/**
 * A listener's TLS (a filter chain's transport_socket): our certificate, and a
 * client certificate required, signed by our CA and naming one of `peers`. Anyone
 * else fails the handshake (listener ssl.fail_verify_no_cert / fail_verify_error /
 * fail_verify_san).
 */
export function downstreamTls(identity: SdsFile, trust: SdsFile, peers: string[]): Obj {
  return {
    name: "envoy.transport_sockets.tls",
    typed_config: {
      "@type": type("envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"),
      require_client_certificate: true,
      common_tls_context: commonTls(identity, trust, peers, ["h2", "http/1.1"]),
    },
  };
}

/** A cluster's TLS (its transport_socket): present our certificate, accept only `peer`'s. */
export function upstreamTls(identity: SdsFile, trust: SdsFile, peer: string): Obj {
  return {
    name: "envoy.transport_sockets.tls",
    typed_config: {
      "@type": type("envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"),
      common_tls_context: commonTls(identity, trust, [peer], ["h2"]),
    },
  };
}

/** Who may open a connection to a service's sidecar: the edge and the services that call it (topology upstreams). */
export function sidecarPeers(serviceName: string): string[] {
  return [edgeIdentity, ...services.filter((s) => s.upstreams.includes(serviceName)).map((s) => s.name)];
}

const anyPath = (paths: string[]): Obj => ({ or_rules: { rules: paths.map((path) => ({ url_path: { path: { exact: path } } })) } });
const peerIs = (ids: string[]): Obj => ({ or_ids: { ids: ids.map((id) => ({ authenticated: { principal_name: { exact: spiffeId(id) } } })) } });

function rbacFilter(statPrefix: string, policies: Obj): Obj {
  return {
    name: "envoy.filters.http.rbac",
    typed_config: {
      "@type": type("envoy.extensions.filters.http.rbac.v3.RBAC"),
      // Anything no policy names is refused: a new method is closed until the table lists it.
      rules: { action: "ALLOW", policies },
      rules_stat_prefix: statPrefix,
    },
  };
}

/**
 * A sidecar's ingress RBAC by the caller's certificate (URI SAN), per method from
 * envoy/access.ts: every method from the edge (which checked the token), and from
 * the mesh only the callers the table names; health from every peer the TLS layer
 * admits (their Envoys health-check this one); reflection from the edge.
 * Denied calls are 403, which gRPC clients see as PERMISSION_DENIED.
 */
export function sidecarRbacFilter(serviceName: string): Obj {
  const peers = sidecarPeers(serviceName);
  const policies: Obj = {
    health: { permissions: [anyPath(infraPaths.health)], principals: [peerIs(peers)] },
    reflection: { permissions: [anyPath(infraPaths.reflection)], principals: [peerIs([edgeIdentity])] },
  };
  for (const entry of accessTable.filter((e) => e.service === serviceName)) {
    policies[methodPath(entry)] = { permissions: [anyPath([methodPath(entry)])], principals: [peerIs([edgeIdentity, ...entry.callers])] };
  }
  return rbacFilter("sidecar", policies);
}

/**
 * Settings for a sidecar ingress's connection manager: the app gets the caller's
 * verified identity in x-forwarded-client-cert (URI=spiffe://...), and nothing a
 * caller wrote there itself.
 */
export const sidecarIngressManagerOptions: Obj = {
  forward_client_cert_details: "SANITIZE_SET",
  set_current_client_cert_details: { uri: true },
};

/**
 * Settings for the edge's connection manager: the client's address is the TCP
 * peer's, never an x-forwarded-for a client wrote (the anonymous rate limit is per
 * address); paths are normalised before RBAC compares them.
 */
export const edgeManagerOptions: Obj = {
  use_remote_address: true,
  normalize_path: true,
  merge_slashes: true,
  path_with_escaped_slashes_action: "REJECT_REQUEST",
};

/** Removes every identity header a client sent, so only jwt_authn can set them (must run before it). */
export function stripIdentityHeadersFilter(): Obj {
  return {
    name: "envoy.filters.http.header_mutation",
    typed_config: {
      "@type": type("envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"),
      mutations: { request_mutations: clientIdentityHeaders.map((remove) => ({ remove })) },
    },
  };
}

/**
 * Verifies the bearer token (ES256, keys from a local JWKS file): issuer, audience,
 * expiry. Internal and admin methods require a token; elsewhere none is fine, but a
 * token that fails verification is refused (401, which gRPC clients see as
 * UNAUTHENTICATED). The verified claims become x-recsys-user/tier/role and dynamic
 * metadata for RBAC; the token itself is forwarded, so the apps can check it too.
 * Verified tokens are cached per worker thread (a client sends the same token until it
 * expires): the ES256 check was about a fifth of the edge's CPU per call. A cached token
 * is still checked for expiry, with the same clock skew, on every request.
 */
export function jwtAuthnFilter(jwksPath: string): Obj {
  const required = { provider_name: jwtProvider };
  const optional = { requires_any: { requirements: [{ provider_name: jwtProvider }, { allow_missing: {} }] } };
  return {
    name: jwtFilter,
    typed_config: {
      "@type": type("envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"),
      providers: {
        [jwtProvider]: {
          issuer: jwtIssuer,
          audiences: [jwtAudience],
          local_jwks: { filename: jwksPath },
          from_headers: [{ name: "authorization", value_prefix: "Bearer " }],
          forward: true,
          payload_in_metadata: jwtPayloadKey,
          claim_to_headers: [
            { header_name: claimHeaders.user, claim_name: "sub" },
            { header_name: claimHeaders.tier, claim_name: "tier" },
            { header_name: claimHeaders.role, claim_name: "role" },
          ],
          clock_skew_seconds: 30,
          jwt_cache_config: { jwt_cache_size: jwtCacheSize },
        },
      },
      rules: [
        ...[...pathsOf("internal"), ...pathsOf("admin")].map((path) => ({ match: { path }, requires: required })),
        { match: { prefix: "/" }, requires: optional },
      ],
    },
  };
}

const roleIs = (role: Role): Obj => ({
  metadata: { filter: jwtFilter, path: [{ key: jwtPayloadKey }, { key: "role" }], value: { string_match: { exact: role } } },
});

/**
 * The edge's RBAC per access class, on the verified token's role (dynamic
 * metadata, which no client header can fake): public methods, health and
 * reflection for anyone; internal for role service or admin; admin for role admin.
 * Any other path is refused. A refusal is 403: PERMISSION_DENIED for gRPC.
 */
export function edgeRbacFilter(): Obj {
  return rbacFilter("edge", {
    public: { permissions: [anyPath([...pathsOf("public"), ...infraPaths.health, ...infraPaths.reflection])], principals: [{ any: true }] },
    internal: { permissions: [anyPath(pathsOf("internal"))], principals: [{ or_ids: { ids: [roleIs("service"), roleIs("admin")] } }] },
    admin: { permissions: [anyPath(pathsOf("admin"))], principals: [roleIs("admin")] },
  });
}

/** The edge's identity filters, in order: after CORS and gRPC-web, before the rate limit. */
export function edgeAuthFilters(jwksPath: string): Obj[] {
  return [stripIdentityHeadersFilter(), jwtAuthnFilter(jwksPath), edgeRbacFilter()];
}

export const rateLimitClusterName = "ratelimit";

/** The envoyproxy/ratelimit service, over gRPC (HTTP/2); STRICT_DNS for a hostname (Kubernetes). */
export function rateLimitCluster(address: string, port: number, discovery: "STATIC" | "STRICT_DNS" = "STATIC"): Obj {
  return {
    name: rateLimitClusterName,
    type: discovery,
    connect_timeout: "0.25s",
    typed_extension_protocol_options: {
      "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": type("envoy.extensions.upstreams.http.v3.HttpProtocolOptions"),
        explicit_http_config: { http2_protocol_options: {} },
      },
    },
    load_assignment: { cluster_name: rateLimitClusterName, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address, port_value: port } } } }] }] },
  };
}

/**
 * The global rate limit: every edge asks one envoyproxy/ratelimit service, so
 * limits hold across edges. Descriptors come only from what jwt_authn verified:
 * (tier, user) for a token with both claims, so each user has its own bucket of
 * its tier's size; otherwise (tier=anonymous, remote_address), a small bucket per
 * client address. Over the limit: RESOURCE_EXHAUSTED for gRPC (the edge's local
 * reply mappers answer gRPC-web and Connect). If the service does not answer in
 * time the call goes through (failure_mode_deny false): the rate limit must not
 * become the edge's single point of failure.
 */
export function globalRateLimitFilter(timeoutMs = 250): Obj {
  const header = (name: string, key: string) => ({ request_headers: { header_name: name, descriptor_key: key } });
  return {
    name: "envoy.filters.http.ratelimit",
    typed_config: {
      "@type": type("envoy.extensions.filters.http.ratelimit.v3.RateLimit"),
      domain: rateLimitDomain,
      timeout: ms(timeoutMs),
      failure_mode_deny: false,
      rate_limited_as_resource_exhausted: true,
      enable_x_ratelimit_headers: "DRAFT_VERSION_03",
      response_headers_to_add: [{ header: { key: "retry-after", value: "1" } }],
      rate_limits: [
        { actions: [header(claimHeaders.tier, descriptorKeys.tier), header(claimHeaders.user, descriptorKeys.user)] },
        {
          actions: [
            {
              header_value_match: {
                descriptor_key: descriptorKeys.tier,
                descriptor_value: anonymousTier,
                expect_match: false,
                headers: [claimHeaders.tier, claimHeaders.user].map((name) => ({ name, present_match: true })),
              },
            },
            { remote_address: {} },
          ],
        },
      ],
      rate_limit_service: { grpc_service: { envoy_grpc: { cluster_name: rateLimitClusterName } }, transport_api_version: "V3" },
    },
  };
}

/** Headers a browser may send cross-origin: no identity header but the bearer token. */
const corsAllowHeaders = "content-type, connect-protocol-version, connect-timeout-ms, grpc-timeout, x-grpc-web, x-user-agent, authorization, x-canary, traceparent, tracestate";

/** The web console's origins (scripts/lib/web.ts): the only ones the edge grants by default. */
export const defaultAllowedOrigins = [`http://127.0.0.1:${localPorts.webConsole}`, `http://localhost:${localPorts.webConsole}`];

/**
 * The CORS policy for the edge's virtual host (typed_per_filter_config of
 * envoy.filters.http.cors): only the listed origins, matched exactly, get a grant;
 * no credentials (cookies) for anyone; a preflight from any other origin is
 * answered by Envoy without a grant instead of reaching an app.
 */
export function corsPolicy(allowedOrigins: string[] = defaultAllowedOrigins): Obj {
  return {
    "envoy.filters.http.cors": {
      "@type": type("envoy.extensions.filters.http.cors.v3.CorsPolicy"),
      allow_origin_string_match: allowedOrigins.map((exact) => ({ exact })),
      allow_methods: "GET, POST, OPTIONS",
      allow_headers: corsAllowHeaders,
      // x-service-version: which prediction version answered (the console shows it).
      expose_headers: "x-service-version, grpc-status, grpc-message, grpc-status-details-bin, traceresponse, retry-after",
      max_age: "86400",
      allow_credentials: false,
      forward_not_matching_preflights: false,
    },
  };
}
