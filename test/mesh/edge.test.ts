// The edge under failure and hostile input (issues 14 and 23), on the whole mesh as
// `npm start` runs it: a killed version fails over to the other, bad frames eject
// nothing, the rate limit answers RESOURCE_EXHAUSTED in every protocol, and idle or
// half-open connections are closed. Checked by behaviour and by Envoy's own stats.
import { connect as connectTcp, type Socket } from "node:net";
import { connect as connectHttp2 } from "node:http2";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { EchoService } from "../../gen/recsys/echo/v1/echo_pb.js";
import { PredictionService } from "../../gen/recsys/prediction/v1/prediction_pb.js";
import { edgeProtection } from "../../envoy/topology.js";
import { createServiceClient } from "../../services/kit/index.js";
import { stats } from "../../scripts/envoy-admin.js";
import { startMesh, type Mesh } from "../../scripts/mesh.js";
import { runCommand } from "../../scripts/processes.js";
import { tool } from "../../scripts/tools.js";

let mesh: Mesh;

beforeAll(async () => {
  mesh = await startMesh({ env: { LOG_LEVEL: "warn" } });
});
afterAll(() => mesh?.stop());

const predictPath = "/recsys.prediction.v1.PredictionService/Predict";
const user = (i: number) => `u${String((i % 2000) + 1).padStart(6, "0")}`;
const codeOf = (e: unknown) => Code[ConnectError.from(e).code];

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
function rawGrpc(session: ReturnType<typeof connectHttp2>, path: string, body: Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const stream = session.request({ ":method": "POST", ":path": path, "content-type": "application/grpc", te: "trailers" });
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
    const client = createServiceClient(PredictionService, mesh.edge);
    const failures: string[] = [];
    const answeredBy = new Map<string, number>();
    let running = true;
    // Bounded load: 8 callers back to back, some forcing v1, until stopped.
    const loops = Array.from({ length: 8 }, async (_, w) => {
      for (let i = 0; running; i++) {
        const headers: Record<string, string> = w === 0 ? { "x-canary": "v1" } : {};
        await client
          .predict({ userId: user(w * 997 + i), numPredictions: 5 }, { headers, timeoutMs: 5000, onHeader: (h) => answeredBy.set(h.get("x-service-version") ?? "none", (answeredBy.get(h.get("x-service-version") ?? "none") ?? 0) + 1) })
          .catch((e: unknown) => failures.push(`${codeOf(e)}: ${ConnectError.from(e).rawMessage}`));
      }
    });
    try {
      await new Promise((r) => setTimeout(r, 1000));
      const beforeKill = answeredBy.get("v2") ?? 0;
      await mesh.killApp("prediction-v1", "SIGKILL");
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
    const client = createServiceClient(PredictionService, mesh.edge);
    const undecodable = Buffer.from([0, 0, 0, 0, 3, 0xff, 0xff, 0xff]);
    const codes = new Map<string, number>();
    try {
      for (let batch = 0; batch < 30; batch++) {
        const bad = await Promise.all(Array.from({ length: 10 }, () => rawGrpc(session, predictPath, undecodable)));
        for (const code of bad) codes.set(code, (codes.get(code) ?? 0) + 1);
        const valid = await client.predict({ userId: user(batch), numPredictions: 3 });
        expect(valid.predictions).toHaveLength(3);
      }
    } finally {
      session.close();
    }
    // Whatever the app calls a bad frame (INTERNAL today, INVALID_ARGUMENT once the
    // kit says so), never "no healthy upstream".
    expect([...codes.values()].reduce((a, b) => a + b, 0)).toBe(300);
    expect(codes.has(String(Code.Unavailable))).toBe(false);
    expect(codes.has("0")).toBe(false);
    expect(await ejections()).toBe(ejectedBefore);
  });

  it("answers a rate-limited call RESOURCE_EXHAUSTED in gRPC-web, Connect and gRPC, with when to retry", async () => {
    const burst = async (call: () => Promise<unknown>) => {
      const results = await Promise.allSettled(Array.from({ length: 250 }, call));
      return results.filter((r): r is PromiseRejectedResult => r.status === "rejected").map((r) => `${codeOf(r.reason)}: ${ConnectError.from(r.reason).rawMessage}`);
    };
    const headers = { "x-user-tier": "free" };
    const web = createClient(EchoService, createGrpcWebTransport({ baseUrl: `http://${mesh.edge}`, httpVersion: "1.1" }));
    // Connect is served by prediction only (echo has no Connect listener).
    const connect = createClient(PredictionService, createConnectTransport({ baseUrl: `http://${mesh.edge}`, httpVersion: "1.1" }));
    const grpc = createServiceClient(EchoService, mesh.edge);
    const calls = [
      () => web.echo({ message: "burst" }, { headers }),
      () => connect.predict({ userId: user(1), numPredictions: 1 }, { headers }),
      () => grpc.echo({ message: "burst" }, { headers }),
    ];
    for (const call of calls) {
      const rejected = await burst(call);
      // The free tier's bucket holds 100: a burst of 250 must meet the limit.
      expect(rejected.length).toBeGreaterThan(0);
      expect(rejected.filter((failure) => !failure.startsWith("ResourceExhausted: "))).toEqual([]);
    }
    // On the wire: gRPC-web gets HTTP 200 and grpc-status 8; Connect gets 429 and its JSON error.
    const send = (path: string, contentType: string, body: BodyInit) => fetch(`http://${mesh.edge}${path}`, { method: "POST", headers: { ...headers, "content-type": contentType }, body });
    const webFrame = new Uint8Array([0, 0, 0, 0, 0]);
    const webAnswers = await Promise.all(Array.from({ length: 250 }, () => send("/recsys.echo.v1.EchoService/Echo", "application/grpc-web+proto", webFrame)));
    const limitedWeb = webAnswers.find((r) => r.headers.get("grpc-status") === "8");
    expect(limitedWeb?.status).toBe(200);
    expect(limitedWeb?.headers.get("retry-after")).toBe("1");
    const connectAnswers = await Promise.all(Array.from({ length: 250 }, () => send(predictPath, "application/json", JSON.stringify({ userId: user(2), numPredictions: 1 }))));
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
      const answer = await createServiceClient(PredictionService, mesh.edge).predict({ userId: user(7), numPredictions: 3 });
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
