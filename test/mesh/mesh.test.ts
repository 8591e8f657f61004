// The whole mesh, as `npm start` runs it, through the real Envoy edge and sidecars,
// checked by behaviour and by Envoy's own stats. The local mesh listens on fixed ports:
// run it in a private network namespace (scripts/in-netns.mjs), as `npm test` does.
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { EchoService } from "../../gen/recsys/echo/v1/echo_pb.js";
import { FallbackLevel, PredictionService } from "../../gen/recsys/prediction/v1/prediction_pb.js";
import { defaultAllowedOrigins } from "../../envoy/security.js";
import { services } from "../../envoy/topology.js";
import { setRuntime, stat, stats } from "../../scripts/lib/envoy-admin.js";
import { startMesh, type Mesh } from "../../scripts/lib/mesh.js";
import { readSince, runCommand } from "../../scripts/lib/processes.js";
import { ROOT, tool } from "../../scripts/lib/tools.js";
import { bearer, edgeClient, edgeTokenMinter } from "../support/tokens.js";

let mesh: Mesh;
let echoAdmin: string;
/** The calls' user: anonymous callers share a small bucket per address, too small for the load here. */
let loadToken: string;
// Its own Redis files and logs, apart from a running `npm start`'s .run/.
const runDir = mkdtempSync(join(tmpdir(), "recsys-mesh-test-"));

/** One instant for every call of v1Answers: time-of-day features move with the clock, and would reorder near ties. */
const requestTime = timestampFromMs(Date.now());

/** Full Predict answers of a few users from prediction-v1, one call at a time: who answered, from which rung, and the items with scores. */
async function v1Answers(): Promise<{ version: string; rung: FallbackLevel; items: Map<string, number> }[]> {
  const client = prediction();
  const answers = [];
  for (const userId of ["u000003", "u000862", "u001500"]) {
    let version = "none";
    const answer = await client.predict(
      { userId, numPredictions: 10, bypassCache: true, context: { timestamp: requestTime } },
      { headers: { "x-canary": "v1" }, onHeader: (h) => (version = h.get("x-service-version") ?? "none") },
    );
    answers.push({ version, rung: answer.metadata?.fallbackLevel ?? FallbackLevel.UNSPECIFIED, items: new Map(answer.predictions.map((p) => [p.itemId, p.score])) });
  }
  return answers;
}
/** Until prediction-v1 itself answers all of them from the full pipeline (a busy machine may put the first calls on a cheaper rung). */
async function primaryV1Answers(timeoutMs = 20_000): Promise<Awaited<ReturnType<typeof v1Answers>>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const answers = await v1Answers();
    if (answers.every((a) => a.version === "v1" && a.rung === FallbackLevel.PRIMARY) || Date.now() > deadline) return answers;
    await new Promise((r) => setTimeout(r, 250));
  }
}
/** What prediction-v1 answered as soon as the mesh was up, when start-up races are still on. */
let firstAnswers: Awaited<ReturnType<typeof v1Answers>>;

beforeAll(async () => {
  mesh = await startMesh({ runDir, env: { LOG_LEVEL: "warn" } });
  echoAdmin = `http://127.0.0.1:${mesh.instances.find((i) => i.service === "echo")!.sidecarAdminPort}`;
  loadToken = (await edgeTokenMinter())("mesh-test-load");
  firstAnswers = await primaryV1Answers();
});
afterAll(async () => {
  await mesh?.stop();
  rmSync(runDir, { recursive: true, force: true });
});

const echo = () => edgeClient(EchoService, mesh.edge, loadToken);
const prediction = () => edgeClient(PredictionService, mesh.edge, loadToken);

/** Which prediction version answered each of n calls (x-service-version header); 50 users, so mostly cached. */
async function versions(n: number, headers: Record<string, string> = {}, concurrency = 20): Promise<Map<string, number>> {
  const client = prediction();
  const counts = new Map<string, number>();
  for (let done = 0; done < n; done += concurrency) {
    await Promise.all(
      Array.from({ length: Math.min(concurrency, n - done) }, async (_, i) => {
        let version = "none";
        await client.predict({ userId: `u${String(((done + i) % 50) + 1).padStart(6, "0")}`, numPredictions: 5 }, { headers, onHeader: (h) => (version = h.get("x-service-version") ?? "none") });
        counts.set(version, (counts.get(version) ?? 0) + 1);
      }),
    );
  }
  return counts;
}

async function weights(v1: number, v2: number) {
  await setRuntime(mesh.edgeAdmin, { "routing.prediction.prediction-v1": v1, "routing.prediction.prediction-v2": v2 });
}
const codeOf = (e: unknown) => ConnectError.from(e).code;
const echoTimeoutMs = services.find((s) => s.name === "echo")!.call.timeoutMs;

async function chaos(values: Record<string, number>) {
  await setRuntime(echoAdmin, values);
}

/** Until the edge routes to echo again (after an ejection or failed health checks). */
async function echoReachable(timeoutMs = 20_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await echo().echo({ message: "ping" }).then(() => true, () => false)) return true;
    await new Promise((r) => setTimeout(r, 250));
  }
  return false;
}

describe("edge and sidecar path", () => {
  it("serves gRPC through the edge and answers grpcurl and health checks there", async () => {
    expect((await echo().echo({ message: "hi" })).message).toBe("hi");
    const call = await runCommand(tool("grpcurl"), ["-plaintext", "-import-path", "proto", "-proto", "recsys/echo/v1/echo.proto", "-d", '{"message":"mesh"}', mesh.edge, "recsys.echo.v1.EchoService/Echo"]);
    expect(JSON.parse(call.stdout)).toEqual({ message: "mesh" });
    expect(await stat(mesh.edgeAdmin, "cluster.echo.upstream_rq_200")).toBeGreaterThan(0);
  });

  it("fails fast on circuit-breaker overflow (pending overflow stats rise)", async () => {
    await setRuntime(mesh.edgeAdmin, { "circuit_breakers.echo.default.max_requests": 2, "circuit_breakers.echo.default.max_pending_requests": 1 });
    try {
      const client = echo();
      const started = performance.now();
      const results = await Promise.allSettled(Array.from({ length: 30 }, () => client.echo({ message: "slow", delayMs: 300 })));
      const rejected = results.filter((r): r is PromiseRejectedResult => r.status === "rejected");
      expect(rejected.length).toBeGreaterThan(0);
      expect(rejected.every((r) => codeOf(r.reason) === Code.Unavailable)).toBe(true);
      expect(performance.now() - started).toBeLessThan(3_000);
    } finally {
      await setRuntime(mesh.edgeAdmin, { "circuit_breakers.echo.default.max_requests": 2048, "circuit_breakers.echo.default.max_pending_requests": 1024 });
    }
    expect(await stat(mesh.edgeAdmin, "cluster.echo.upstream_rq_pending_overflow")).toBeGreaterThan(0);
  });

  it("hides a retried upstream failure from the caller (edge retry stats rise)", async () => {
    expect(await echoReachable()).toBe(true);
    const retriesBefore = await stat(mesh.edgeAdmin, "cluster.echo.upstream_rq_retry");
    const overflowBefore = await stat(mesh.edgeAdmin, "cluster.echo.upstream_rq_retry_overflow");
    const abortsBefore = await stat(echoAdmin, "http.ingress_echo.fault.aborts_injected");
    await chaos({ "chaos.abort_percent": 10, "chaos.abort_grpc_status": 14 });
    try {
      const client = echo();
      // 300 calls, 3 at a time: never more retries at once than the budget's floor
      // (min_retry_concurrency 3), so the budget refuses none. A call still fails when
      // all 4 of its attempts abort (10^-4 each): one such call in 300 is chance (3%),
      // two are 1 in 2,000 runs. Without retries about 30 calls would fail.
      const failures: string[] = [];
      for (let batch = 0; batch < 100; batch++) {
        const results = await Promise.allSettled(Array.from({ length: 3 }, (_, i) => client.echo({ message: String(i) })));
        failures.push(...results.filter((r): r is PromiseRejectedResult => r.status === "rejected").map((r) => ConnectError.from(r.reason).message));
      }
      expect(failures.length, failures.join("; ")).toBeLessThanOrEqual(1);
    } finally {
      await chaos({ "chaos.abort_percent": 0 });
    }
    expect(await stat(echoAdmin, "http.ingress_echo.fault.aborts_injected")).toBeGreaterThanOrEqual(abortsBefore + 10);
    expect(await stat(mesh.edgeAdmin, "cluster.echo.upstream_rq_retry")).toBeGreaterThanOrEqual(retriesBefore + 10);
    expect(await stat(mesh.edgeAdmin, "cluster.echo.upstream_rq_retry_overflow")).toBe(overflowBefore);
  });

  it("detects an upstream forced into errors but keeps a service's only host, and fails fast instead of waiting", async () => {
    expect(await echoReachable()).toBe(true);
    const outlier = async () => {
      const s = await stats(mesh.edgeAdmin, "^cluster\\.echo\\.outlier_detection\\.(ejections_detected_consecutive_gateway_failure|ejections_enforced_total|ejections_active)$");
      expect([...s.keys()].sort()).toEqual(["active", "detected_consecutive_gateway_failure", "enforced_total"].map((k) => `cluster.echo.outlier_detection.ejections_${k}`));
      return { detected: s.get("cluster.echo.outlier_detection.ejections_detected_consecutive_gateway_failure")!, enforced: s.get("cluster.echo.outlier_detection.ejections_enforced_total")!, active: s.get("cluster.echo.outlier_detection.ejections_active")! };
    };
    const before = await outlier();
    await chaos({ "chaos.abort_percent": 100, "chaos.abort_grpc_status": 14 });
    try {
      const client = echo();
      const codes = new Set<string>();
      // Each call is several attempts (the edge retries UNAVAILABLE): far past the consecutive failures that count as an outlier.
      for (let i = 0; i < 10; i++) codes.add(await client.echo({ message: "x" }).then(() => "OK", (e: unknown) => Code[codeOf(e)]!));
      expect(codes).toEqual(new Set(["Unavailable"]));
      // Detected (the worker threads report to the main thread), but echo's only host is never ejected: max 50%.
      await expect.poll(async () => (await outlier()).detected, { timeout: 10_000 }).toBeGreaterThan(before.detected);
      expect(await outlier()).toMatchObject({ enforced: before.enforced, active: 0 });
      // Fails fast: its attempts and their backoffs, far inside the route's timeout.
      const started = performance.now();
      const err = await client.echo({ message: "while failing" }).catch((e: unknown) => e);
      expect(codeOf(err)).toBe(Code.Unavailable);
      expect(performance.now() - started).toBeLessThan(echoTimeoutMs / 4);
    } finally {
      await chaos({ "chaos.abort_percent": 0 });
    }
    expect(await echoReachable()).toBe(true);
  });

  it("logs every failed or traced call and, of the rest, the share the runtime says (access_log.sample_percent), for gRPC and Connect alike", async () => {
    expect(await echoReachable()).toBe(true);
    const logFile = join(ROOT, ".run", "logs", "envoy-echo-ingress.access.log");
    // Only what this test appends: the file outlives meshes and may be large.
    const from = existsSync(logFile) ? statSync(logFile).size : 0;
    const appended = () => (existsSync(logFile) ? readSince(logFile, from) : "");
    const linesOf = (id: string) => appended().split("\n").filter((line) => line.includes(id));
    // Envoy writes its access log buffer out every 10 s (--file-flush-interval-msec).
    const logged = async (id: string) => {
      await expect.poll(() => linesOf(id).length, { timeout: 30_000, interval: 250 }).toBeGreaterThan(0);
      return linesOf(id).map((line) => JSON.parse(line) as { grpc_status: number });
    };
    const traceId = () => randomBytes(16).toString("hex");
    // A trace id of its own marks each call's lines; the flag says whether it is traced.
    const traceparent = (id: string, sampled = false) => ({ traceparent: `00-${id}-${randomBytes(8).toString("hex")}-${sampled ? "01" : "00"}` });
    const connectEcho = createClient(EchoService, createConnectTransport({ baseUrl: `http://${mesh.edge}`, httpVersion: "1.1", interceptors: [bearer(loadToken)] }));
    const [ok, okConnect, failed, traced, sampled] = [traceId(), traceId(), traceId(), traceId(), traceId()];
    await setRuntime(echoAdmin, { "access_log.sample_percent": 0 });
    try {
      for (let i = 0; i < 5; i++) {
        await echo().echo({ message: "log" }, { headers: traceparent(ok) });
        await connectEcho.echo({ message: "log" }, { headers: traceparent(okConnect) });
      }
      await echo().echo({ message: "log" }, { headers: traceparent(traced, true) });
      await chaos({ "chaos.abort_percent": 100, "chaos.abort_grpc_status": 14 });
      await expect(echo().echo({ message: "log" }, { headers: traceparent(failed) })).rejects.toThrow(/fault filter abort/);
      await chaos({ "chaos.abort_percent": 0 });
      const failures = await logged(failed);
      expect(failures.length).toBeGreaterThan(0);
      expect(failures.every((line) => line.grpc_status === 14)).toBe(true);
      // Written before the failure, so flushed with it: the traced call is there, none of the OK ones.
      expect(linesOf(traced).map((line) => (JSON.parse(line) as { grpc_status: number }).grpc_status)).toEqual([0]);
      expect(linesOf(ok)).toEqual([]);
      expect(linesOf(okConnect)).toEqual([]);
      await setRuntime(echoAdmin, { "access_log.sample_percent": 100 });
      await echo().echo({ message: "log" }, { headers: traceparent(sampled) });
      expect((await logged(sampled)).map((line) => line.grpc_status)).toEqual([0]);
    } finally {
      await chaos({ "chaos.abort_percent": 0 });
      await setRuntime(echoAdmin, { "access_log.sample_percent": "" });
    }
  }, 90_000);
});

describe("prediction through the edge", () => {
  it("answers Predict over gRPC (grpcurl, reflection), and health says SERVING", async () => {
    const list = await runCommand(tool("grpcurl"), ["-plaintext", mesh.edge, "list"]);
    expect(list.stdout).toContain("recsys.prediction.v1.PredictionService");
    const call = await runCommand(tool("grpcurl"), ["-plaintext", "-d", '{"user_id":"u000001","num_predictions":5}', mesh.edge, "recsys.prediction.v1.PredictionService/Predict"]);
    expect(call.code, call.stderr).toBe(0);
    const answer = JSON.parse(call.stdout);
    expect(answer.predictions).toHaveLength(5);
    expect(answer.metadata.fallbackLevel).toBe("FALLBACK_LEVEL_PRIMARY");
    const health = await runCommand(tool("grpc-health-probe"), [`-addr=${mesh.edge}`]);
    expect(health.stdout + health.stderr).toContain("status: SERVING");
    expect(health.code).toBe(0);
  });

  it("serves browsers: a Connect JSON request and a gRPC-web request reach Predict, and only allowed origins get a CORS grant", async () => {
    const fromOrigin = (origin: string) =>
      fetch(`http://${mesh.edge}/recsys.prediction.v1.PredictionService/Predict`, {
        method: "POST",
        headers: { "content-type": "application/json", origin },
        body: JSON.stringify({ userId: "u000002", numPredictions: 3 }),
      });
    for (const origin of defaultAllowedOrigins) {
      const res = await fromOrigin(origin);
      expect(res.status).toBe(200);
      expect(res.headers.get("access-control-allow-origin")).toBe(origin);
      expect((await res.json()).predictions).toHaveLength(3);
    }
    // Any other origin is answered, with no grant a browser would honour.
    const other = await fromOrigin("http://localhost:3000");
    expect(other.headers.get("access-control-allow-origin")).toBeNull();
    await other.arrayBuffer();
    const web = createClient(PredictionService, createGrpcWebTransport({ baseUrl: `http://${mesh.edge}`, httpVersion: "1.1" }));
    const answer = await web.predict({ userId: "u000003", numPredictions: 4 });
    expect(answer.predictions).toHaveLength(4);
  });

  it("answers bad input with INVALID_ARGUMENT through the edge, not a fallback", async () => {
    const err = await prediction().predict({ userId: "", numPredictions: 5 }).catch((e: unknown) => ConnectError.from(e));
    expect((err as ConnectError).code).toBe(Code.InvalidArgument);
    expect((err as ConnectError).rawMessage).toContain("user_id");
  });

  it("splits 90/10 by runtime weight within 3 points over 2,000 calls, and the change needs no restart", async () => {
    await weights(90, 10);
    try {
      const counts = await versions(2000);
      expect(((counts.get("v2") ?? 0) / 2000) * 100).toBeGreaterThan(7);
      expect(((counts.get("v2") ?? 0) / 2000) * 100).toBeLessThan(13);
      await weights(0, 100);
      expect(await versions(100)).toEqual(new Map([["v2", 100]]));
    } finally {
      await weights(100, 0);
    }
  });

  it("ranks with the loaded item features from its first answer: the same answers as a prediction-v1 started after the load", async () => {
    // npm start loads the batch features while the apps start: item features read before
    // that must not be kept as if the store had none (this answered with defaults for ~40 s).
    // Both caches on the way start empty now, long after the load.
    for (const app of ["feature", "prediction-v1"]) {
      await mesh.killApp(app);
      await mesh.restartApp(app);
    }
    const again = await primaryV1Answers();
    for (const answers of [firstAnswers, again]) expect(answers.map((a) => [a.version, FallbackLevel[a.rung]])).toEqual(Array(3).fill(["v1", "PRIMARY"]));
    // The same items with the same scores (defaults instead of item features moved scores by about 0.1).
    again.forEach((answer, i) => {
      const first = firstAnswers[i]!.items;
      expect([...answer.items.keys()].sort()).toEqual([...first.keys()].sort());
      for (const [itemId, score] of answer.items) expect(Math.abs(score - first.get(itemId)!), itemId).toBeLessThan(1e-4);
    });
  });

  it("always sends x-canary: v2 to v2, whatever the weights", async () => {
    expect(await versions(100, { "x-canary": "v2" })).toEqual(new Map([["v2", 100]]));
  });

  it("keeps answering when a dependency is killed: the ladder degrades, the caller sees no error", async () => {
    const restarts = mesh.restarts().feature;
    await mesh.killApp("feature");
    try {
      // Stopped on purpose: the supervisor leaves it down.
      expect(mesh.restarts().feature).toBe(restarts);
      expect(mesh.instances.find((i) => i.id === "feature")!.app.signalCode).toBe("SIGKILL");
      const client = prediction();
      const answers = await Promise.all(Array.from({ length: 20 }, (_, i) => client.predict({ userId: `u${String(i + 500).padStart(6, "0")}`, numPredictions: 5, bypassCache: true })));
      for (const a of answers) {
        expect(a.predictions.length).toBe(5);
        expect(a.metadata?.fallbackLevel).not.toBe(FallbackLevel.PRIMARY);
      }
    } finally {
      await mesh.restartApp("feature");
    }
  });
});
