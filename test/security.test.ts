// Issue 15's building blocks on real processes: two edge Envoys and a retrieval
// sidecar assembled from envoy/security.ts, in front of a real kit gRPC server, with
// a real Redis, the real envoyproxy/ratelimit and certificates from scripts/pki.ts.
// Who may call what is checked by the codes callers get and by Envoy's own stats.
import { generateKeyPairSync, createPrivateKey, X509Certificate, type KeyObject } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect as connectTls } from "node:tls";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Code, ConnectError, createClient, type HandlerContext } from "@connectrpc/connect";
import { createGrpcTransport, createGrpcWebTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { EchoService } from "../gen/recsys/echo/v1/echo_pb.js";
import { ExperimentService } from "../gen/recsys/experiment/v1/experiment_pb.js";
import { FeatureService } from "../gen/recsys/feature/v1/feature_pb.js";
import { PredictionService } from "../gen/recsys/prediction/v1/prediction_pb.js";
import { RetrievalService } from "../gen/recsys/retrieval/v1/retrieval_pb.js";
import { accessTable, accessTableMarkdown, methodPath } from "../envoy/access.js";
import {
  corsPolicy,
  defaultAllowedOrigins,
  downstreamTls,
  edgeAuthFilters,
  edgeIdentity,
  edgeManagerOptions,
  globalRateLimitFilter,
  rateLimitCluster,
  sidecarIngressManagerOptions,
  sidecarPeers,
  sidecarRbacFilter,
  spiffeId,
  upstreamTls,
  type Role,
} from "../envoy/security.js";
import { service, services, tiers } from "../envoy/topology.js";
import { baseConfigShape, implement, loadConfig, startServer, type RunningServer } from "../services/kit/index.js";
import { stat, stats } from "../scripts/lib/envoy-admin.js";
import { ensurePki, type Pki } from "../scripts/lib/pki.js";
import { freePort } from "../scripts/lib/processes.js";
import { defaultEdgeRateLimits, renderRateLimitConfig, startRateLimitService, type EdgeRateLimits, type RateLimitService } from "../scripts/lib/ratelimit.js";
import { mintToken } from "../scripts/lib/token.js";
import { startRedis, type TestRedis } from "./support/redis.js";
import { startEnvoy, validateEnvoyConfig, writeEnvoyConfig, type TestEnvoy } from "./support/envoy.js";

type Obj = Record<string, unknown>;
const type = (name: string) => `type.googleapis.com/${name}`;

describe("the access table", () => {
  it("classifies every RPC of every topology service exactly once", () => {
    const served = [PredictionService, FeatureService, RetrievalService, ExperimentService, EchoService];
    expect(services.flatMap((s) => s.grpcServices).sort()).toEqual(served.map((s) => s.typeName).sort());
    const rpcs = served.flatMap((s) => s.methods.map((m) => `/${s.typeName}/${m.name}`));
    expect(accessTable.map(methodPath).sort()).toEqual(rpcs.sort());
  });

  it("names as callers only services whose topology calls that service", () => {
    for (const entry of accessTable) {
      for (const caller of entry.callers) expect(service(caller).upstreams, `${caller} calling ${methodPath(entry)}`).toContain(entry.service);
    }
  });

  it("renders as markdown, a row per method", () => {
    const markdown = accessTableMarkdown();
    for (const entry of accessTable) expect(markdown).toContain(`| ${entry.service} | \`${entry.method}\` | ${entry.access} |`);
  });

  it("gives anonymous callers the smallest rate-limit bucket", () => {
    const limits = defaultEdgeRateLimits();
    expect(limits.anonymousPerAddress.requestsPerUnit).toBeLessThan(Math.min(...tiers.map((t) => t.rps)));
    expect(renderRateLimitConfig(limits)).toContain("remote_address");
  });
});

// Fixed daily windows keep counts independent of the machine's speed; inOneWindow
// reruns a scenario with fresh identities if the day turned while it ran.
const testLimits: EdgeRateLimits = {
  anonymousPerAddress: { requestsPerUnit: 3, unit: "day" },
  perUser: { free: { requestsPerUnit: 2, unit: "day" }, premium: { requestsPerUnit: 4, unit: "day" }, enterprise: { requestsPerUnit: 6, unit: "day" } },
};
const DAY_MS = 86_400_000;
async function inOneWindow(scenario: (attempt: number) => Promise<void>): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    const window = Math.floor(Date.now() / DAY_MS);
    try {
      return await scenario(attempt);
    } catch (err) {
      if (attempt > 0 || Math.floor(Date.now() / DAY_MS) === window) throw err;
    }
  }
}

interface Seen {
  user: string | null;
  tier: string | null;
  role: string | null;
  clientTier: string | null;
  peer: string | null;
}

/** Retrieval's RPCs, answered empty; each answer says which identity headers arrived. */
const reportIdentity = async (_request: unknown, ctx: HandlerContext) => {
  const h = ctx.requestHeader;
  const seen: Seen = { user: h.get("x-recsys-user"), tier: h.get("x-recsys-tier"), role: h.get("x-recsys-role"), clientTier: h.get("x-user-tier"), peer: h.get("x-forwarded-client-cert") };
  ctx.responseHeader.set("x-seen-identity", JSON.stringify(seen));
  return {};
};
const retrievalStub = implement(RetrievalService, {
  search: reportIdentity,
  getCandidates: reportIdentity,
  getCandidatesBatch: reportIdentity,
  getPopular: reportIdentity,
  upsertItems: reportIdentity,
  deleteItems: reportIdentity,
  indexInfo: reportIdentity,
  rebuildIndex: reportIdentity,
});

const dir = mkdtempSync(join(tmpdir(), "recsys-security-"));
let pki: Pki;
let rogue: Pki;
let signingKey: KeyObject;
let redis: TestRedis;
let rateLimit: RateLimitService;
let app: RunningServer;
let sidecar: TestEnvoy;
let sidecarAddress: string;
const edges: { envoy: TestEnvoy; address: string }[] = [];
const configs: string[] = [];

const http2Options = {
  "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": type("envoy.extensions.upstreams.http.v3.HttpProtocolOptions"),
    explicit_http_config: { http2_protocol_options: {} },
  },
};

function cluster(name: string, port: number, transportSocket?: Obj): Obj {
  return {
    name,
    type: "STATIC",
    connect_timeout: "1s",
    typed_extension_protocol_options: http2Options,
    load_assignment: { cluster_name: name, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: "127.0.0.1", port_value: port } } } }] }] },
    ...(transportSocket ? { transport_socket: transportSocket } : {}),
  };
}

function manager(statPrefix: string, options: Obj, filters: Obj[], virtualHost: Obj): Obj {
  return {
    name: "envoy.filters.network.http_connection_manager",
    typed_config: {
      "@type": type("envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"),
      stat_prefix: statPrefix,
      codec_type: "AUTO",
      ...options,
      route_config: { name: statPrefix, virtual_hosts: [{ name: statPrefix, domains: ["*"], ...virtualHost }] },
      http_filters: [...filters, { name: "envoy.filters.http.router", typed_config: { "@type": type("envoy.extensions.filters.http.router.v3.Router") } }],
    },
  };
}

function bootstrap(id: string, adminPort: number, listener: Obj, clusters: Obj[]): Obj {
  return { node: { id, cluster: id }, admin: { address: { socket_address: { address: "127.0.0.1", port_value: adminPort } } }, static_resources: { listeners: [listener], clusters } };
}

/** The retrieval sidecar's ingress: mTLS with the callers the topology names, RBAC per method. */
function sidecarConfig(port: number, adminPort: number, appPort: number): Obj {
  const ingress = {
    name: "ingress",
    stat_prefix: "ingress",
    address: { socket_address: { address: "127.0.0.1", port_value: port } },
    filter_chains: [
      {
        filters: [manager("ingress_retrieval", sidecarIngressManagerOptions, [sidecarRbacFilter("retrieval")], { routes: [{ match: { prefix: "/" }, route: { cluster: "local_app_grpc", timeout: "10s" } }] })],
        transport_socket: downstreamTls(pki.identity("retrieval").sds, pki.trust, sidecarPeers("retrieval")),
      },
    ],
  };
  return bootstrap("retrieval", adminPort, ingress, [cluster("local_app_grpc", appPort)]);
}

/** An edge: CORS, gRPC-web, identity and RBAC, the global rate limit; everything to the retrieval sidecar over mTLS. */
function edgeConfig(port: number, adminPort: number): Obj {
  const filters = [
    { name: "envoy.filters.http.cors", typed_config: { "@type": type("envoy.extensions.filters.http.cors.v3.Cors") } },
    { name: "envoy.filters.http.grpc_web", typed_config: { "@type": type("envoy.extensions.filters.http.grpc_web.v3.GrpcWeb") } },
    ...edgeAuthFilters(pki.jwks),
    // Generous: the limits asserted here must not be skipped by a slow answer on a loaded machine.
    globalRateLimitFilter(5000),
  ];
  const listener = {
    name: "edge",
    address: { socket_address: { address: "127.0.0.1", port_value: port } },
    filter_chains: [{ filters: [manager("edge", edgeManagerOptions, filters, { typed_per_filter_config: corsPolicy(), routes: [{ match: { prefix: "/" }, route: { cluster: "retrieval", timeout: "10s" } }] })] }],
  };
  return bootstrap(
    edgeIdentity,
    adminPort,
    listener,
    [cluster("retrieval", Number(sidecarAddress.split(":")[1]), upstreamTls(pki.identity(edgeIdentity).sds, pki.trust, "retrieval")), rateLimitCluster("127.0.0.1", rateLimit.grpcPort)],
  );
}

beforeAll(async () => {
  [pki, rogue, redis] = await Promise.all([
    ensurePki({ dir: join(dir, "pki"), identities: [edgeIdentity, "retrieval", "prediction", "feature"] }),
    // Another CA issuing a certificate that claims to be the edge.
    ensurePki({ dir: join(dir, "rogue"), identities: [edgeIdentity] }),
    startRedis(),
  ]);
  signingKey = createPrivateKey(readFileSync(pki.jwtKey));
  rateLimit = await startRateLimitService({ redisUrl: redis.url, limits: testLimits });
  app = await startServer({ name: "retrieval-stub", config: loadConfig(baseConfigShape, { LOG_LEVEL: "warn" }), services: [retrievalStub] });
  app.setReady(true);
  const [sidecarPort, sidecarAdmin] = [await freePort(), await freePort()];
  sidecarAddress = `127.0.0.1:${sidecarPort}`;
  const sidecarPath = writeEnvoyConfig(dir, "sidecar-retrieval", sidecarConfig(sidecarPort, sidecarAdmin, app.port));
  configs.push(sidecarPath);
  sidecar = await startEnvoy(sidecarPath, sidecarAdmin);
  for (const name of ["edge-1", "edge-2"]) {
    const [port, admin] = [await freePort(), await freePort()];
    const path = writeEnvoyConfig(dir, name, edgeConfig(port, admin));
    configs.push(path);
    edges.push({ envoy: await startEnvoy(path, admin), address: `127.0.0.1:${port}` });
  }
}, 180_000);

afterAll(async () => {
  await Promise.all([...edges.map((e) => e.envoy.stop()), sidecar?.stop()]);
  await Promise.all([rateLimit?.stop(), app?.shutdown()]);
  await redis?.stop();
  rmSync(dir, { recursive: true, force: true });
});

type Method = "getPopular" | "getCandidates" | "deleteItems";
const requests = { getPopular: { k: 1 }, getCandidates: { userId: "u1", k: 1 }, deleteItems: { itemIds: ["i1"] } };

interface CallOptions {
  token?: string;
  headers?: Record<string, string>;
  /** Local address to call from (any of 127.0.0.0/8): its own anonymous bucket. */
  from?: string;
  /** mTLS straight to a sidecar with this identity's certificate (none: no client certificate). */
  tls?: { cert?: string; key?: string };
  grpcWeb?: boolean;
}

/** One call; the gRPC code's name and, when it reached the app, what identity the app saw. */
async function call(address: string, method: Method, options: CallOptions = {}): Promise<{ code: string; seen?: Seen }> {
  const tls = options.tls;
  const nodeOptions = {
    ...(options.from ? { localAddress: options.from } : {}),
    ...(tls ? { ca: readFileSync(pki.caCert), ...(tls.cert ? { cert: readFileSync(tls.cert), key: readFileSync(tls.key!) } : {}), checkServerIdentity: () => undefined } : {}),
  };
  const baseUrl = `${tls ? "https" : "http"}://${address}`;
  const session = new Http2SessionManager(baseUrl, {}, nodeOptions);
  const transport = options.grpcWeb ? createGrpcWebTransport({ baseUrl, httpVersion: "1.1", nodeOptions }) : createGrpcTransport({ baseUrl, sessionManager: session });
  const headers = { ...options.headers, ...(options.token ? { authorization: `Bearer ${options.token}` } : {}) };
  let seen: Seen | undefined;
  const client = createClient(RetrievalService, transport);
  try {
    await client[method](requests[method] as never, { headers, timeoutMs: 15_000, onHeader: (h) => (seen = h.has("x-seen-identity") ? (JSON.parse(h.get("x-seen-identity")!) as Seen) : undefined) });
    return { code: "OK", seen };
  } catch (err) {
    return { code: Code[ConnectError.from(err).code]!, seen };
  } finally {
    session.abort();
  }
}

async function codes(address: string, method: Method, options: CallOptions, n: number): Promise<string[]> {
  const out: string[] = [];
  for (let i = 0; i < n; i++) out.push((await call(address, method, options)).code);
  return out;
}
const okThenLimited = (n: number) => [...Array<string>(n).fill("OK"), "ResourceExhausted"];

const token = (user: string, tier = "free", role: Role = "user", nowSeconds?: number) => mintToken({ user, tier, role, ttlSeconds: 600 }, signingKey, nowSeconds);
const edge = (i = 0) => edges[i]!.address;
const edgeAdmin = (i = 0) => edges[i]!.envoy.admin;

it("envoy --mode validate accepts every config built here", async () => {
  expect(configs).toHaveLength(3);
  for (const path of configs) {
    const { code, output } = await validateEnvoyConfig(path);
    expect(output, path).toContain("OK");
    expect(code, path).toBe(0);
  }
});

describe("at the edge: identity from verified tokens only", () => {
  it("without a token, internal and admin methods are UNAUTHENTICATED, over gRPC and gRPC-web", async () => {
    expect((await call(edge(), "getCandidates")).code).toBe("Unauthenticated");
    expect((await call(edge(), "deleteItems")).code).toBe("Unauthenticated");
    expect((await call(edge(), "deleteItems", { grpcWeb: true })).code).toBe("Unauthenticated");
    // The old shared admin token is not a JWT: refused, not waved through.
    expect((await call(edge(), "deleteItems", { headers: { authorization: "Bearer dev-admin-token" } })).code).toBe("Unauthenticated");
  });

  it("a forged, tampered or expired token is UNAUTHENTICATED on every method, public ones too", async () => {
    const { privateKey: otherKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const forged = mintToken({ user: "mallory", tier: "enterprise", role: "admin", ttlSeconds: 600 }, otherKey);
    const [head, , signature] = token("mallory", "free", "user").split(".");
    const tampered = `${head}.${Buffer.from(JSON.stringify({ iss: "https://auth.recsys.local", aud: "recsys-edge", sub: "mallory", tier: "enterprise", role: "admin", exp: 4102444800 })).toString("base64url")}.${signature}`;
    const expired = token("mallory", "enterprise", "admin", Math.floor(Date.now() / 1000) - 3600);
    const deniedBefore = await stat(edgeAdmin(), "http.edge.jwt_authn.denied");
    for (const bad of [forged, tampered, expired]) {
      for (const method of ["deleteItems", "getCandidates", "getPopular"] as const) expect((await call(edge(), method, { token: bad })).code, method).toBe("Unauthenticated");
    }
    expect(await stat(edgeAdmin(), "http.edge.jwt_authn.denied")).toBe(deniedBefore + 9);
  });

  it("a verified token is served from the edge's cache, and still stops working at expiry plus the 30 s clock skew", async () => {
    // Expired 20 s ago: inside the 30 s skew for about 10 s more, time for two calls on a busy machine.
    const expiresAt = Math.floor(Date.now() / 1000) - 20;
    const nearlyExpired = token("cached-user", "enterprise", "user", expiresAt - 600);
    const [hitsBefore, missesBefore] = [await stat(edgeAdmin(), "http.edge.jwt_authn.jwt_cache_hit"), await stat(edgeAdmin(), "http.edge.jwt_authn.jwt_cache_miss")];
    expect((await call(edge(), "getPopular", { token: nearlyExpired })).code).toBe("OK");
    expect((await call(edge(), "getPopular", { token: nearlyExpired })).code).toBe("OK");
    expect(await stat(edgeAdmin(), "http.edge.jwt_authn.jwt_cache_miss")).toBeGreaterThan(missesBefore);
    expect(await stat(edgeAdmin(), "http.edge.jwt_authn.jwt_cache_hit")).toBeGreaterThan(hitsBefore);
    // Past the skew: refused although the cache holds it (a cache honouring its own 60 s default would let it through).
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, (expiresAt + 31) * 1000 - Date.now())));
    expect((await call(edge(), "getPopular", { token: nearlyExpired })).code).toBe("Unauthenticated");
  });

  it("the role decides: user -> public only; service -> internal too; admin -> everything (PERMISSION_DENIED otherwise)", async () => {
    const rbacDeniedBefore = await stat(edgeAdmin(), "http.edge.rbac.edge.denied");
    const user = token("role-user", "enterprise", "user");
    const svc = token("role-service", "enterprise", "service");
    const admin = token("role-admin", "enterprise", "admin");
    expect((await call(edge(), "getPopular", { token: user })).code).toBe("OK");
    expect((await call(edge(), "getCandidates", { token: user })).code).toBe("PermissionDenied");
    expect((await call(edge(), "deleteItems", { token: user })).code).toBe("PermissionDenied");
    expect((await call(edge(), "getCandidates", { token: svc })).code).toBe("OK");
    expect((await call(edge(), "deleteItems", { token: svc })).code).toBe("PermissionDenied");
    const asAdmin = await call(edge(), "deleteItems", { token: admin });
    expect(asAdmin.code).toBe("OK");
    // The app sees the verified claims and the edge as its mTLS peer.
    expect(asAdmin.seen).toMatchObject({ user: "role-admin", tier: "enterprise", role: "admin", clientTier: null });
    expect(asAdmin.seen?.peer).toContain(`URI=${spiffeId(edgeIdentity)}`);
    expect(await stat(edgeAdmin(), "http.edge.rbac.edge.denied")).toBe(rbacDeniedBefore + 3);
  });
});

describe("at the edge: the global rate limit by verified tier and user", () => {
  it("a public method works anonymously, up to the anonymous limit per client address, whatever identity headers it sends", async () => {
    await inOneWindow(async (attempt) => {
      const from = `127.0.0.${10 + attempt * 2}`;
      const spoofing = { "x-user-tier": "enterprise", "x-recsys-tier": "enterprise", "x-recsys-user": "someone-else", "x-recsys-role": "admin", "x-forwarded-for": "10.9.9.9" };
      const first = await call(edge(), "getPopular", { from, headers: spoofing });
      expect(first.code).toBe("OK");
      // None of it reached the app: the edge removed what the client claimed.
      expect(first.seen).toEqual({ user: null, tier: null, role: null, clientTier: null, peer: expect.stringContaining(spiffeId(edgeIdentity)) as unknown as string });
      const limit = testLimits.anonymousPerAddress.requestsPerUnit;
      // A different x-forwarded-for on each call is no new bucket.
      const rest: string[] = [];
      for (let i = 1; i <= limit; i++) rest.push((await call(edge(), "getPopular", { from, headers: { ...spoofing, "x-forwarded-for": `10.9.9.${i}` } })).code);
      expect(["OK", ...rest]).toEqual(okThenLimited(limit));
      // Another address has a bucket of its own.
      expect((await call(edge(), "getPopular", { from: `127.0.0.${11 + attempt * 2}` })).code).toBe("OK");
    });
  });

  it("a token's tier sets the limit, each user has a bucket of their own, and a client-sent tier changes nothing", async () => {
    await inOneWindow(async (attempt) => {
      const limits = testLimits.perUser;
      const claimsEnterprise = { "x-user-tier": "enterprise", "x-recsys-tier": "enterprise" };
      const freeA = { token: token(`free-a-${attempt}`, "free"), headers: claimsEnterprise };
      const first = await call(edge(), "getPopular", freeA);
      expect(first).toMatchObject({ code: "OK", seen: { user: `free-a-${attempt}`, tier: "free", role: "user", clientTier: null } });
      const rest = await codes(edge(), "getPopular", freeA, limits.free!.requestsPerUnit);
      expect([first.code, ...rest]).toEqual(okThenLimited(limits.free!.requestsPerUnit));
      expect(await codes(edge(), "getPopular", { token: token(`free-b-${attempt}`, "free") }, limits.free!.requestsPerUnit + 1)).toEqual(okThenLimited(limits.free!.requestsPerUnit));
      expect(await codes(edge(), "getPopular", { token: token(`premium-${attempt}`, "premium") }, limits.premium!.requestsPerUnit + 1)).toEqual(okThenLimited(limits.premium!.requestsPerUnit));
    });
  });

  it("two edges sharing one rate limit service share one limit per user", async () => {
    await inOneWindow(async (attempt) => {
      const shared = token(`shared-${attempt}`, "premium");
      const limit = testLimits.perUser.premium!.requestsPerUnit;
      const answers: string[] = [];
      for (let i = 0; i < limit; i++) answers.push((await call(edge(i % 2), "getPopular", { token: shared })).code);
      expect(answers).toEqual(Array(limit).fill("OK"));
      expect((await call(edge(0), "getPopular", { token: shared })).code).toBe("ResourceExhausted");
      expect((await call(edge(1), "getPopular", { token: shared })).code).toBe("ResourceExhausted");
    });
    for (const i of [0, 1]) {
      const counters = await stats(edgeAdmin(i), "^cluster\\.retrieval\\.ratelimit\\.");
      expect(counters.get("cluster.retrieval.ratelimit.over_limit"), `edge ${i}`).toBeGreaterThan(0);
      // Every answer above came from the rate limit service, none from failing open.
      expect(counters.get("cluster.retrieval.ratelimit.failure_mode_allowed") ?? 0, `edge ${i}`).toBe(0);
      expect(counters.get("cluster.retrieval.ratelimit.error") ?? 0, `edge ${i}`).toBe(0);
    }
  });
});

describe("at the edge: CORS", () => {
  const preflight = (origin: string) =>
    fetch(`http://${edge()}/recsys.retrieval.v1.RetrievalService/GetPopular`, {
      method: "OPTIONS",
      headers: { origin, "access-control-request-method": "POST", "access-control-request-headers": "content-type,x-grpc-web,authorization" },
    });

  it("grants the allow-listed origin, and nothing to any other origin, preflight or not", async () => {
    const allowed = defaultAllowedOrigins[0]!;
    const granted = await preflight(allowed);
    expect(granted.headers.get("access-control-allow-origin")).toBe(allowed);
    expect(granted.headers.get("access-control-allow-credentials")).toBeNull();
    const refused = await preflight("https://evil.example");
    expect(refused.headers.get("access-control-allow-origin")).toBeNull();
    // A simple request from another origin: answered, but with no grant a browser would honour.
    const body = Buffer.from([0, 0, 0, 0, 2, 0x10, 0x01]);
    const simple = await fetch(`http://${edge()}/recsys.retrieval.v1.RetrievalService/GetPopular`, {
      method: "POST",
      headers: { origin: "https://evil.example", "content-type": "application/grpc-web+proto", "x-grpc-web": "1", authorization: `Bearer ${token("cors-check", "enterprise")}` },
      body,
    });
    await simple.arrayBuffer();
    expect(simple.headers.get("access-control-allow-origin")).toBeNull();
  });
});

describe("at a sidecar: mTLS and RBAC by the caller's certificate", () => {
  const as = (name: string, from: Pki = pki) => ({ cert: from.identity(name).cert, key: from.identity(name).key });

  it("a named caller calls what the table allows it, and nothing else", async () => {
    const deniedBefore = await stat(sidecar.admin, "http.ingress_retrieval.rbac.sidecar.denied");
    const candidates = await call(sidecarAddress, "getCandidates", { tls: as("prediction") });
    expect(candidates.code).toBe("OK");
    expect(candidates.seen?.peer).toContain(`URI=${spiffeId("prediction")}`);
    expect((await call(sidecarAddress, "getPopular", { tls: as("prediction") })).code).toBe("OK");
    // Admin methods only ever come from the edge.
    expect((await call(sidecarAddress, "deleteItems", { tls: as("prediction") })).code).toBe("PermissionDenied");
    expect(await stat(sidecar.admin, "http.ingress_retrieval.rbac.sidecar.denied")).toBe(deniedBefore + 1);
  });

  it("refuses at the handshake: no certificate, another CA's, or a service the topology does not let call it", async () => {
    const before = await stats(sidecar.admin, "^listener\\.ingress\\.ssl\\.fail_verify");
    const failures = (s: Map<string, number>, name: string) => (s.get(`listener.ingress.ssl.${name}`) ?? 0) - (before.get(`listener.ingress.ssl.${name}`) ?? 0);
    expect((await call(sidecarAddress, "getPopular", { tls: {} })).code).not.toBe("OK");
    expect((await call(sidecarAddress, "getPopular", { tls: as(edgeIdentity, rogue) })).code).not.toBe("OK");
    expect((await call(sidecarAddress, "getPopular", { tls: as("feature") })).code).not.toBe("OK");
    // Plaintext gets nowhere either.
    expect((await call(sidecarAddress, "getPopular")).code).not.toBe("OK");
    const after = await stats(sidecar.admin, "^listener\\.ingress\\.ssl\\.fail_verify");
    expect(failures(after, "fail_verify_no_cert")).toBeGreaterThanOrEqual(1);
    expect(failures(after, "fail_verify_error")).toBeGreaterThanOrEqual(1);
    expect(failures(after, "fail_verify_san")).toBeGreaterThanOrEqual(1);
  });

  it("serves a rotated certificate on new connections without a restart", async () => {
    const servedSerial = () =>
      new Promise<string>((resolve, reject) => {
        const own = pki.identity("prediction");
        const socket = connectTls({ host: "127.0.0.1", port: Number(sidecarAddress.split(":")[1]), ca: readFileSync(pki.caCert), cert: readFileSync(own.cert), key: readFileSync(own.key), ALPNProtocols: ["h2"], checkServerIdentity: () => undefined });
        socket.once("secureConnect", () => {
          resolve(socket.getPeerCertificate().serialNumber.toLowerCase());
          socket.destroy();
        });
        socket.once("error", reject);
      });
    const before = await servedSerial();
    await ensurePki({ dir: pki.dir, identities: ["retrieval"], rotate: true });
    const issued = new X509Certificate(readFileSync(pki.identity("retrieval").cert)).serialNumber.toLowerCase();
    expect(issued).not.toBe(before);
    const deadline = Date.now() + 30_000;
    let served = before;
    while (served !== issued && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 200));
      served = await servedSerial();
    }
    expect(served).toBe(issued);
    // The edge accepts the new certificate on a new connection.
    expect((await call(edge(1), "getCandidates", { token: token("after-rotation", "enterprise", "service") })).code).toBe("OK");
  });
});
