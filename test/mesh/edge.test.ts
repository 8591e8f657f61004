// The edge under failure, hostile input and unauthorised callers (issues 14, 15, 17
// and 23), on the whole mesh as `npm start` runs it: a killed version fails over to
// the other, bad frames eject nothing, the rate limit answers RESOURCE_EXHAUSTED in
// every protocol, idle or half-open connections are closed; only verified tokens open
// internal and admin methods, only the web console's origin gets a CORS grant, no
// sidecar takes a call without the mesh's mTLS; and one endpoint serves every service
// over gRPC (with reflection), gRPC-web and Connect. Checked by behaviour and by
// Envoy's own stats.
import { generateKeyPairSync, type KeyObject } from "node:crypto";
import { readFileSync } from "node:fs";
import { connect as connectTcp, type Socket } from "node:net";
import { connect as connectHttp2 } from "node:http2";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { Health } from "../../gen/grpc/health/v1/health_pb.js";
import { EchoService } from "../../gen/recsys/echo/v1/echo_pb.js";
import { ExperimentService } from "../../gen/recsys/experiment/v1/experiment_pb.js";
import { FeatureService } from "../../gen/recsys/feature/v1/feature_pb.js";
import { PredictionService } from "../../gen/recsys/prediction/v1/prediction_pb.js";
import { RetrievalService } from "../../gen/recsys/retrieval/v1/retrieval_pb.js";
import { defaultAllowedOrigins, edgeIdentity, type Role } from "../../envoy/security.js";
import { edgeProtection, services } from "../../envoy/topology.js";
import { stat, stats } from "../../scripts/lib/envoy-admin.js";
import { startMesh, type Mesh } from "../../scripts/lib/mesh.js";
import { pkiLayout } from "../../scripts/lib/pki.js";
import { runCommand } from "../../scripts/lib/processes.js";
import { localSigningKey, mintToken } from "../../scripts/lib/token.js";
import { tool } from "../../scripts/lib/tools.js";
import { allServices, codeName, fuzzCases, RawGrpcClient, runPool } from "../support/fuzz-frames.js";
import { bearer } from "../support/tokens.js";

let mesh: Mesh;
let signingKey: KeyObject;

beforeAll(async () => {
  mesh = await startMesh({ env: { LOG_LEVEL: "warn" } });
  // The key the mesh's edge and apps trust (.run/pki, which the mesh created).
  signingKey = await localSigningKey();
});
afterAll(() => mesh?.stop());

const token = (user: string, role: Role = "user", tier = "enterprise") => mintToken({ user, tier, role, ttlSeconds: 3600 }, signingKey);
/** gRPC to the edge, as one signed-in user (anonymous callers share a small bucket per address). */
const grpcAs = (value: string | undefined): Transport => createGrpcTransport({ baseUrl: `http://${mesh.edge}`, interceptors: value ? [bearer(value)] : [] });
const webAs = (value: string | undefined): Transport => createGrpcWebTransport({ baseUrl: `http://${mesh.edge}`, httpVersion: "1.1", interceptors: value ? [bearer(value)] : [] });
const connectAs = (value: string | undefined): Transport => createConnectTransport({ baseUrl: `http://${mesh.edge}`, httpVersion: "1.1", interceptors: value ? [bearer(value)] : [] });
let loadToken: string;
beforeAll(() => {
  loadToken = token("edge-test-load");
});

const predictPath = "/recsys.prediction.v1.PredictionService/Predict";
const user = (i: number) => `u${String((i % 2000) + 1).padStart(6, "0")}`;
const codeOf = (e: unknown) => Code[ConnectError.from(e).code];
/** The gRPC code's name of one call, or OK. */
const codeOfCall = (call: Promise<unknown>) => call.then(() => "OK", (e: unknown) => codeOf(e));

/** Every enforced outlier ejection at the edge, summed over its clusters. */
async function ejections(): Promise<number> {
  const s = await stats(mesh.edgeAdmin, "outlier_detection\\.ejections_enforced_total$");
  return [...s.values()].reduce((a, b) => a + b, 0);
}

/** Until the edge's health checks see an instance healthy again. */
async function edgeSeesHealthy(cluster: string, port: number, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const text = await fetch(`${mesh.edgeAdmin}/clusters`).then((r) => r.text());
    if (text.includes(`${cluster}::127.0.0.1:${port}::health_flags::healthy`)) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`edge does not see ${cluster} healthy after ${timeoutMs} ms`);
}

/** One raw unary gRPC call over HTTP/2: the grpc-status the edge answers with. */
function rawGrpc(session: ReturnType<typeof connectHttp2>, path: string, body: Buffer, authorization: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const stream = session.request({ ":method": "POST", ":path": path, "content-type": "application/grpc", te: "trailers", authorization });
    let status = "";
    stream.on("response", (headers) => (status = String(headers["grpc-status"] ?? status)));
    stream.on("trailers", (trailers) => (status = String(trailers["grpc-status"] ?? status)));
    stream.on("data", () => undefined);
    stream.on("end", () => resolve(status));
    stream.on("error", reject);
    stream.setTimeout(10_000, () => stream.close());
    stream.end(body);
  });
}

describe("no prediction version is a single point of failure", () => {
  it("answers every call while prediction-v1's app is killed: retried on v2, then routed there; health and reflection keep answering", async () => {
    const v1 = mesh.instances.find((i) => i.id === "prediction-v1")!;
    const client = createClient(PredictionService, grpcAs(loadToken));
    const failures: string[] = [];
    // Calls under way when v1 died: one whose answer v1 had begun to send (headers out,
    // trailers not) ends INTERNAL, and no proxy may retry half an answer. Every call that
    // starts after the kill must be answered.
    const inFlightAtKill: string[] = [];
    let killed = false;
    const answeredBy = new Map<string, number>();
    let running = true;
    // Bounded load: 8 callers back to back, some forcing v1, until stopped.
    const loops = Array.from({ length: 8 }, async (_, w) => {
      for (let i = 0; running; i++) {
        const headers: Record<string, string> = w === 0 ? { "x-canary": "v1" } : {};
        const startedAfterKill = killed;
        await client
          .predict({ userId: user(w * 997 + i), numPredictions: 5 }, { headers, timeoutMs: 5000, onHeader: (h) => answeredBy.set(h.get("x-service-version") ?? "none", (answeredBy.get(h.get("x-service-version") ?? "none") ?? 0) + 1) })
          .catch((e: unknown) => (startedAfterKill ? failures : inFlightAtKill).push(`${codeOf(e)}: ${ConnectError.from(e).rawMessage}`));
      }
    });
    try {
      await new Promise((r) => setTimeout(r, 1000));
      const beforeKill = answeredBy.get("v2") ?? 0;
      await mesh.killApp("prediction-v1", "SIGKILL");
      killed = true;
      // While v1 is down: the edge's own health check and reflection, through the edge.
      await new Promise((r) => setTimeout(r, 1500));
      const health = await runCommand(tool("grpc-health-probe"), [`-addr=${mesh.edge}`]);
      expect(health.stdout + health.stderr).toContain("status: SERVING");
      const list = await runCommand(tool("grpcurl"), ["-plaintext", mesh.edge, "list"]);
      expect(list.stdout).toContain("recsys.prediction.v1.PredictionService");
      await new Promise((r) => setTimeout(r, 2500));
      running = false;
      await Promise.all(loops);
      expect(failures).toEqual([]);
      expect(inFlightAtKill.length).toBeLessThanOrEqual(8);
      for (const failure of inFlightAtKill) expect(failure).toMatch(/^Internal: /);
      // The calls really went somewhere else: v2 answered what v1 could not.
      expect((answeredBy.get("v2") ?? 0) - beforeKill).toBeGreaterThan(20);
    } finally {
      running = false;
      await Promise.all(loops);
      await mesh.restartApp("prediction-v1");
      await edgeSeesHealthy("prediction-v1", v1.ingressPort);
    }
    expect((await stats(mesh.edgeAdmin, "^cluster\\.prediction-v1-first\\.upstream_rq_retry$")).get("cluster.prediction-v1-first.upstream_rq_retry")).toBeGreaterThan(0);
  });
});

describe("hostile input", () => {
  it("300 undecodable Predict frames eject nothing, and a valid Predict between them always answers", async () => {
    const ejectedBefore = await ejections();
    const session = connectHttp2(`http://${mesh.edge}`);
    const client = createClient(PredictionService, grpcAs(loadToken));
    const undecodable = Buffer.from([0, 0, 0, 0, 3, 0xff, 0xff, 0xff]);
    const codes = new Map<string, number>();
    try {
      for (let batch = 0; batch < 30; batch++) {
        const bad = await Promise.all(Array.from({ length: 10 }, () => rawGrpc(session, predictPath, undecodable, `Bearer ${loadToken}`)));
        for (const code of bad) codes.set(code, (codes.get(code) ?? 0) + 1);
        const valid = await client.predict({ userId: user(batch), numPredictions: 3 });
        expect(valid.predictions).toHaveLength(3);
      }
    } finally {
      session.close();
    }
    // The client's fault, said so: INVALID_ARGUMENT every time, never "no healthy upstream".
    expect(Object.fromEntries(codes)).toEqual({ [String(Code.InvalidArgument)]: 300 });
    expect(await ejections()).toBe(ejectedBefore);
  });

  it("malformed and mutated frames for every method of every service through the edge: no INTERNAL or UNIMPLEMENTED, nothing ejected, SERVING after", async () => {
    const ejectedBefore = await ejections();
    const raw = new RawGrpcClient(mesh.edge);
    // An admin token, so the frames pass the edge's RBAC and reach every app's decoder.
    const authorization = `Bearer ${token("edge-test-fuzz", "admin")}`;
    const counts = new Map<string, number>();
    const failures: string[] = [];
    try {
      // Health/Watch is a stream that stays open by design: no answer to wait for.
      const methods = allServices.flatMap((service) => service.methods).filter((m) => m.methodKind !== "server_streaming");
      const cases = methods.flatMap((method, i) => [...fuzzCases(method, 20_261_128 + i, 2)]);
      await runPool(cases, 8, async (fuzz) => {
        const outcome = await raw.call(fuzz.path, fuzz.body, { ...fuzz.headers, authorization });
        const code = codeName(outcome);
        counts.set(code, (counts.get(code) ?? 0) + 1);
        if (outcome.code === undefined || [Code.Internal, Code.Unimplemented, Code.Unknown, Code.Unavailable].includes(outcome.code)) failures.push(`${fuzz.path} ${fuzz.name}: ${code} ${outcome.message}`);
      });
      expect(cases.length).toBeGreaterThan(200);
    } finally {
      raw.close();
    }
    expect(failures).toEqual([]);
    expect(counts.get("INVALID_ARGUMENT")).toBeGreaterThan(0);
    expect(await ejections()).toBe(ejectedBefore);
    const health = await runCommand(tool("grpc-health-probe"), [`-addr=${mesh.edge}`]);
    expect(health.stdout + health.stderr).toMatch(/status: SERVING/);
  });

  it("answers a rate-limited call RESOURCE_EXHAUSTED in gRPC-web, Connect and gRPC, with when to retry; the tier comes from the token, not a header", async () => {
    const burst = async (call: () => Promise<unknown>) => {
      const results = await Promise.allSettled(Array.from({ length: 250 }, call));
      return results.filter((r): r is PromiseRejectedResult => r.status === "rejected").map((r) => `${codeOf(r.reason)}: ${ConnectError.from(r.reason).rawMessage}`);
    };
    // Each burst is one free-tier user of its own (50 calls a second): 250 at once must meet the limit.
    const free = (name: string) => token(`${name}-${Date.now()}`, "user", "free");
    const claimsEnterprise = { "x-user-tier": "enterprise", "x-recsys-tier": "enterprise" };
    const web = createClient(EchoService, webAs(free("burst-web")));
    const connect = createClient(EchoService, connectAs(free("burst-connect")));
    const grpc = createClient(EchoService, grpcAs(free("burst-grpc")));
    const calls = [
      () => web.echo({ message: "burst" }, { headers: claimsEnterprise }),
      () => connect.echo({ message: "burst" }, { headers: claimsEnterprise }),
      () => grpc.echo({ message: "burst" }, { headers: claimsEnterprise }),
    ];
    for (const call of calls) {
      const rejected = await burst(call);
      expect(rejected.length).toBeGreaterThan(0);
      expect(rejected.filter((failure) => !failure.startsWith("ResourceExhausted: "))).toEqual([]);
    }
    // An enterprise user's burst of the same size passes.
    const enterprise = createClient(EchoService, grpcAs(token(`burst-enterprise-${Date.now()}`)));
    expect(await burst(() => enterprise.echo({ message: "burst" }))).toEqual([]);
    // Limited by the global rate limit service (shared by every edge), not by this edge's backstop
    // (a burst may also see some of its answers time out and pass: failure_mode_allowed).
    expect(await stat(mesh.edgeAdmin, "cluster.echo.ratelimit.over_limit")).toBeGreaterThan(0);
    expect(await stat(mesh.edgeAdmin, "edge_backstop_ratelimit.http_local_rate_limit.rate_limited")).toBe(0);
    // On the wire: gRPC-web gets HTTP 200 and grpc-status 8; Connect gets 429 and its JSON error.
    const send = (path: string, contentType: string, body: BodyInit, bearerToken: string) =>
      fetch(`http://${mesh.edge}${path}`, { method: "POST", headers: { authorization: `Bearer ${bearerToken}`, "content-type": contentType }, body });
    const webFrame = new Uint8Array([0, 0, 0, 0, 0]);
    const webUser = free("wire-web");
    const webAnswers = await Promise.all(Array.from({ length: 250 }, () => send("/recsys.echo.v1.EchoService/Echo", "application/grpc-web+proto", webFrame, webUser)));
    const limitedWeb = webAnswers.find((r) => r.headers.get("grpc-status") === "8");
    expect(limitedWeb?.status).toBe(200);
    expect(limitedWeb?.headers.get("retry-after")).toBe("1");
    const connectUser = free("wire-connect");
    const connectAnswers = await Promise.all(Array.from({ length: 250 }, () => send(predictPath, "application/json", JSON.stringify({ userId: user(2), numPredictions: 1 }), connectUser)));
    const limitedConnect = connectAnswers.find((r) => r.status === 429);
    expect(limitedConnect?.headers.get("content-type")).toBe("application/json");
    expect(await limitedConnect?.json()).toMatchObject({ code: "resource_exhausted" });
    await Promise.all([...webAnswers, ...connectAnswers].filter((r) => !r.bodyUsed).map((r) => r.body?.cancel()));
  });
});

describe("limits at the edge", () => {
  it("closes idle and half-open connections within its timeouts while Predict keeps answering", async () => {
    const { idleTimeoutMs, requestHeadersTimeoutMs } = edgeProtection;
    const [host, port] = [mesh.edge.split(":")[0]!, Number(mesh.edge.split(":")[1])];
    const preface = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    const emptySettings = Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0]);
    // A HEADERS frame announcing 100 bytes on stream 1, of which only 10 arrive.
    const partialHeaders = Buffer.concat([Buffer.from([0, 0, 100, 1, 4, 0, 0, 0, 1]), Buffer.alloc(10, 0x82)]);
    const kinds: Record<string, Buffer | null> = {
      idle: null,
      "partial HTTP/2 preface": preface.subarray(0, 10),
      "partial HTTP/2 headers": Buffer.concat([preface, emptySettings, partialHeaders]),
      "partial HTTP/1.1 headers": Buffer.from(`POST ${predictPath} HTTP/1.1\r\nhost: edge\r\ncontent-type: application/json\r\n`),
    };
    const opened = performance.now();
    const sockets: { kind: string; socket: Socket; closedAfterMs: Promise<number> }[] = [];
    for (let i = 0; i < 500; i++) {
      const kind = Object.keys(kinds)[i % 4]!;
      const socket = connectTcp({ host, port });
      socket.on("error", () => undefined);
      socket.on("data", () => undefined);
      socket.once("connect", () => kinds[kind] && socket.write(kinds[kind]!));
      sockets.push({ kind, socket, closedAfterMs: new Promise((resolve) => socket.once("close", () => resolve(performance.now() - opened))) });
    }
    try {
      // Held connections do not stop real calls.
      const answer = await createClient(PredictionService, grpcAs(loadToken)).predict({ userId: user(7), numPredictions: 3 });
      expect(answer.predictions).toHaveLength(3);
      // A half-sent request times out first, then its connection idles out: the
      // longest any of these can live is the two timeouts in turn. Budget: that plus 10 s.
      const budgetMs = idleTimeoutMs + requestHeadersTimeoutMs + 10_000;
      const closed = await Promise.all(sockets.map((s) => Promise.race([s.closedAfterMs, new Promise<number>((r) => setTimeout(() => r(Infinity), budgetMs))])));
      const open = sockets.filter((_, i) => closed[i] === Infinity).map((s) => s.kind);
      expect(open).toEqual([]);
      // Closed by the edge's timeouts, not at once (a refused connection would close at once).
      expect(Math.min(...closed)).toBeGreaterThan(requestHeadersTimeoutMs - 1000);
    } finally {
      for (const { socket } of sockets) socket.destroy();
    }
    expect((await stats(mesh.edgeAdmin, "^http\\.edge\\.downstream_cx_idle_timeout$")).get("http.edge.downstream_cx_idle_timeout")).toBeGreaterThan(0);
  }, 90_000);
});

describe("secure by default (issue 15)", () => {
  const admin = () => token("edge-test-admin", "admin");
  /** Each admin or internal write the mesh serves, on a transport. */
  const writes = (transport: Transport) => {
    const retrieval = createClient(RetrievalService, transport);
    const feature = createClient(FeatureService, transport);
    const experiment = createClient(ExperimentService, transport);
    return {
      DeleteItems: () => retrieval.deleteItems({ itemIds: ["i000001"] }),
      UpsertItems: () => retrieval.upsertItems({ items: [{ itemId: "edge-test-item" }] }),
      WriteFeatures: () => feature.writeFeatures({}),
      RecordExposures: () => experiment.recordExposures({}),
    };
  };

  it("refuses admin and internal writes through the edge without a valid token, or with a token whose role may not, over gRPC and gRPC-web", async () => {
    const { privateKey: otherKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const forged = mintToken({ user: "mallory", tier: "enterprise", role: "admin", ttlSeconds: 600 }, otherKey);
    const jwtDenied = await stat(mesh.edgeAdmin, "http.edge.jwt_authn.denied");
    const rbacDenied = await stat(mesh.edgeAdmin, "http.edge.rbac.edge.denied");
    const answers: Record<string, string> = {};
    const expected: Record<string, string> = {};
    for (const [protocol, as] of [["grpc", grpcAs], ["grpc-web", webAs]] as const) {
      for (const [credential, value, refusal] of [
        ["no token", undefined, "Unauthenticated"],
        ["forged admin token", forged, "Unauthenticated"],
        ["user token", token("edge-test-user"), "PermissionDenied"],
      ] as const) {
        for (const [method, call] of Object.entries(writes(as(value)))) {
          answers[`${method} over ${protocol} with ${credential}`] = await codeOfCall(call());
          expected[`${method} over ${protocol} with ${credential}`] = refusal;
        }
      }
    }
    expect(answers).toEqual(expected);
    // Refused by the edge's own filters, not by the apps.
    expect(await stat(mesh.edgeAdmin, "http.edge.jwt_authn.denied")).toBeGreaterThanOrEqual(jwtDenied + 16);
    expect(await stat(mesh.edgeAdmin, "http.edge.rbac.edge.denied")).toBeGreaterThanOrEqual(rbacDenied + 8);
  });

  it("lets an admin token through end to end (edge, mTLS to the sidecar, the app's own check), and the app refuses the call without one", async () => {
    const invalidate = (transport: Transport) => createClient(PredictionService, transport).invalidateCache({ userIds: ["u000001"] });
    expect(await codeOfCall(invalidate(grpcAs(admin())))).toBe("OK");
    expect(await codeOfCall(invalidate(webAs(admin())))).toBe("OK");
    // Straight to the app (loopback, past the sidecar): the app checks the token itself, with the mesh's JWKS.
    const app = mesh.instances.find((i) => i.id === "prediction-v1")!;
    const direct = (value?: string) => createGrpcTransport({ baseUrl: `http://127.0.0.1:${app.appPort}`, interceptors: value ? [bearer(value)] : [] });
    expect(await codeOfCall(invalidate(direct()))).toBe("Unauthenticated");
    expect(await codeOfCall(invalidate(direct(token("edge-test-user"))))).toBe("Unauthenticated");
    expect(await codeOfCall(invalidate(direct(admin())))).toBe("OK");
  });

  it("serves Predict to anonymous callers", async () => {
    const answer = await createClient(PredictionService, grpcAs(undefined)).predict({ userId: user(11), numPredictions: 3 });
    expect(answer.predictions).toHaveLength(3);
  });

  it("grants CORS to the web console's origin only", async () => {
    const preflight = (origin: string) =>
      fetch(`http://${mesh.edge}${predictPath}`, {
        method: "OPTIONS",
        headers: { origin, "access-control-request-method": "POST", "access-control-request-headers": "content-type,connect-protocol-version,authorization" },
      });
    const console = defaultAllowedOrigins[0]!;
    const granted = await preflight(console);
    expect(granted.headers.get("access-control-allow-origin")).toBe(console);
    expect(granted.headers.get("access-control-allow-credentials")).toBeNull();
    for (const origin of ["http://localhost:3000", "https://evil.example"]) {
      expect((await preflight(origin)).headers.get("access-control-allow-origin"), origin).toBeNull();
      // A simple request from it is answered, but with no grant a browser would honour.
      const simple = await fetch(`http://${mesh.edge}${predictPath}`, { method: "POST", headers: { origin, "content-type": "application/json" }, body: JSON.stringify({ userId: user(12), numPredictions: 1 }) });
      await simple.arrayBuffer();
      expect(simple.headers.get("access-control-allow-origin"), origin).toBeNull();
    }
    const fromConsole = await fetch(`http://${mesh.edge}${predictPath}`, { method: "POST", headers: { origin: console, "content-type": "application/json" }, body: JSON.stringify({ userId: user(13), numPredictions: 1 }) });
    expect(fromConsole.status).toBe(200);
    expect(fromConsole.headers.get("access-control-allow-origin")).toBe(console);
    expect(fromConsole.headers.get("access-control-expose-headers")).toContain("x-service-version");
    await fromConsole.arrayBuffer();
  });

  it("a sidecar's ingress refuses plaintext, a client without a certificate and a peer the topology does not name; the edge's certificate gets through", async () => {
    const retrieval = mesh.instances.find((i) => i.id === "retrieval")!;
    const pki = pkiLayout();
    const health = async (nodeOptions?: Record<string, unknown>) => {
      const baseUrl = `${nodeOptions ? "https" : "http"}://127.0.0.1:${retrieval.ingressPort}`;
      const session = new Http2SessionManager(baseUrl, {}, nodeOptions);
      try {
        return await codeOfCall(createClient(Health, createGrpcTransport({ baseUrl, sessionManager: session })).check({ service: "" }, { timeoutMs: 5000 }));
      } finally {
        session.abort();
      }
    };
    const as = (name: string) => ({ ca: readFileSync(pki.caCert), cert: readFileSync(pki.identity(name).cert), key: readFileSync(pki.identity(name).key), checkServerIdentity: () => undefined });
    const sidecarAdmin = `http://127.0.0.1:${retrieval.sidecarAdminPort}`;
    const before = await stats(sidecarAdmin, "^listener\\..*\\.ssl\\.fail_verify");
    expect(await health()).not.toBe("OK");
    expect(await health({ ca: readFileSync(pki.caCert), checkServerIdentity: () => undefined })).not.toBe("OK");
    // feature never calls retrieval (topology upstreams): its certificate is refused at the handshake.
    expect(await health(as("feature"))).not.toBe("OK");
    expect(await health(as(edgeIdentity))).toBe("OK");
    const after = await stats(sidecarAdmin, "^listener\\..*\\.ssl\\.fail_verify");
    const rise = (suffix: string) => [...after].filter(([k]) => k.endsWith(suffix)).reduce((sum, [k, v]) => sum + v - (before.get(k) ?? 0), 0);
    expect(rise("ssl.fail_verify_no_cert")).toBeGreaterThanOrEqual(1);
    expect(rise("ssl.fail_verify_san")).toBeGreaterThanOrEqual(1);
  });
});

describe("one endpoint for the whole public API (issue 17)", () => {
  const grpcServices = services.filter((s) => s.name !== "echo").flatMap((s) => s.grpcServices);

  it("lists every service with reflection through the edge, and grpcurl calls another service's public method with reflection alone", async () => {
    const list = await runCommand(tool("grpcurl"), ["-plaintext", mesh.edge, "list"]);
    expect(list.code, list.stderr).toBe(0);
    for (const name of grpcServices) expect(list.stdout, name).toContain(name);
    const popular = await runCommand(tool("grpcurl"), ["-plaintext", "-d", '{"k":3}', mesh.edge, "recsys.retrieval.v1.RetrievalService/GetPopular"]);
    expect(popular.code, popular.stderr).toBe(0);
    expect(JSON.parse(popular.stdout).candidates).toHaveLength(3);
    // RBAC, not reflection, decides: an admin method is refused without a token.
    const deleted = await runCommand(tool("grpcurl"), ["-plaintext", "-d", '{"item_ids":["i000001"]}', mesh.edge, "recsys.retrieval.v1.RetrievalService/DeleteItems"]);
    expect(deleted.stdout + deleted.stderr).toContain("Unauthenticated");
  });

  it("reaches every service over Connect (JSON) and gRPC-web, through each service's sidecar", async () => {
    const service = token("edge-test-backend", "service");
    const answers: Record<string, string> = {};
    for (const [protocol, as] of [["connect", connectAs], ["grpc-web", webAs]] as const) {
      const calls: Record<string, () => Promise<unknown>> = {
        prediction: () => createClient(PredictionService, as(loadToken)).predict({ userId: user(21), numPredictions: 2 }),
        retrieval: () => createClient(RetrievalService, as(loadToken)).getPopular({ k: 2 }),
        experiment: () => createClient(ExperimentService, as(loadToken)).assign({ userId: user(22) }),
        echo: () => createClient(EchoService, as(loadToken)).echo({ message: protocol }),
        // Feature serves backends only: a service token.
        feature: () => createClient(FeatureService, as(service)).listFeatureViews({}),
      };
      expect(Object.keys(calls).sort()).toEqual(services.map((s) => s.name).sort());
      for (const [name, call] of Object.entries(calls)) answers[`${protocol} ${name}`] = await codeOfCall(call());
    }
    expect(Object.entries(answers).filter(([, code]) => code !== "OK")).toEqual([]);
    // Connect requests are not gRPC: each sidecar sent them to its app's Connect listener.
    for (const s of services) {
      let sent = 0;
      for (const i of mesh.instances.filter((i) => i.service === s.name)) sent += await stat(`http://127.0.0.1:${i.sidecarAdminPort}`, "cluster.local_app_connect.upstream_rq_total");
      expect(sent, s.name).toBeGreaterThan(0);
    }
  });
});
