// The mesh through the real Envoy edge and sidecars, checked by behaviour and by
// Envoy's own stats. One file, because the local mesh listens on fixed ports (do
// not run it while `npm start` is up).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Code, ConnectError } from "@connectrpc/connect";
import { EchoService } from "../gen/recsys/echo/v1/echo_pb.js";
import { createServiceClient } from "../services/kit/index.js";
import { setRuntime, stat } from "../scripts/envoy-admin.js";
import { startMesh, type Mesh } from "../scripts/mesh.js";
import { runCommand } from "../scripts/processes.js";
import { tool } from "../scripts/tools.js";

let mesh: Mesh;
let echoAdmin: string;

beforeAll(async () => {
  mesh = await startMesh({ only: ["echo"], env: { LOG_LEVEL: "warn" } });
  echoAdmin = `http://127.0.0.1:${mesh.instances.find((i) => i.service === "echo")!.sidecarAdminPort}`;
});
afterAll(() => mesh?.stop());

const echo = () => createServiceClient(EchoService, mesh.edge);
const codeOf = (e: unknown) => ConnectError.from(e).code;

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

  it("limits a tier over its rate with RESOURCE_EXHAUSTED and leaves other tiers alone", async () => {
    const client = echo();
    const burst = (tier: string) =>
      Promise.allSettled(Array.from({ length: 250 }, () => client.echo({ message: tier }, { headers: { "x-user-tier": tier } })));
    const free = await burst("free");
    const limited = free.filter((r): r is PromiseRejectedResult => r.status === "rejected");
    expect(limited.length).toBeGreaterThan(0);
    expect(new Set(limited.map((r) => Code[codeOf(r.reason)]))).toEqual(new Set(["ResourceExhausted"]));
    const premium = await burst("premium");
    expect(premium.filter((r): r is PromiseRejectedResult => r.status === "rejected").map((r) => ConnectError.from(r.reason).message)).toEqual([]);
    expect(await stat(mesh.edgeAdmin, "edge_tier_ratelimit.http_local_rate_limit.rate_limited")).toBeGreaterThanOrEqual(limited.length);
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
    await chaos({ "chaos.abort_percent": 10, "chaos.abort_grpc_status": 14 });
    try {
      const client = echo();
      // 200 calls, 5 at a time: within the retry budget (20% of active requests, at
      // least 3 retries at once).
      const failures: string[] = [];
      for (let batch = 0; batch < 40; batch++) {
        const results = await Promise.allSettled(Array.from({ length: 5 }, (_, i) => client.echo({ message: String(i) })));
        failures.push(...results.filter((r): r is PromiseRejectedResult => r.status === "rejected").map((r) => ConnectError.from(r.reason).message));
      }
      expect(failures).toEqual([]);
    } finally {
      await chaos({ "chaos.abort_percent": 0 });
    }
    expect(await stat(mesh.edgeAdmin, "cluster.echo.upstream_rq_retry")).toBeGreaterThan(retriesBefore);
    expect(await stat(echoAdmin, "http.ingress_echo.fault.aborts_injected")).toBeGreaterThan(0);
  });

  it("ejects an upstream forced into errors, then fails fast instead of waiting", async () => {
    expect(await echoReachable()).toBe(true);
    await chaos({ "chaos.abort_percent": 100, "chaos.abort_grpc_status": 14 });
    try {
      const client = echo();
      for (let i = 0; i < 20; i++) await client.echo({ message: "x" }).catch(() => undefined);
      expect(await stat(mesh.edgeAdmin, "cluster.echo.outlier_detection.ejections_enforced_total")).toBeGreaterThan(0);
      const started = performance.now();
      const err = await client.echo({ message: "after ejection" }).catch((e: unknown) => e);
      expect(codeOf(err)).toBe(Code.Unavailable);
      expect(performance.now() - started).toBeLessThan(200);
    } finally {
      await chaos({ "chaos.abort_percent": 0 });
    }
    // Ejection ends after base_ejection_time; the health checks see it SERVING.
    expect(await echoReachable()).toBe(true);
  });
});
