import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { EchoService } from "../../../gen/recsys/echo/v1/echo_pb.js";
import { BadRequestSchema } from "../../../gen/google/rpc/error_details_pb.js";
import { tool } from "../../../scripts/tools.js";
import { freePort, runCommand, startProcess } from "../../../scripts/processes.js";
import { baseConfigShape, createServiceClient, loadConfig, startServer, type RunningServer } from "../index.js";
import { echoService } from "../../echo/handlers.js";

const config = (extra: Record<string, string> = {}) =>
  loadConfig(baseConfigShape, { GRPC_PORT: "0", CONNECT_PORT: "0", METRICS_PORT: "0", LOG_LEVEL: "silent", ...extra });

async function scrape(port: number): Promise<string> {
  return (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
}

function counter(metrics: string, code: string): number {
  const line = metrics
    .split("\n")
    .find((l) => l.startsWith("grpc_server_handled_total{") && l.includes('grpc_method="Echo"') && l.includes(`grpc_code="${code}"`));
  return line ? Number(line.split(" ").pop()) : 0;
}

describe("service kit, real server on a free port", () => {
  let server: RunningServer;
  let address: string;

  beforeAll(async () => {
    server = await startServer({ name: "echo", config: config(), services: [echoService] });
    address = `127.0.0.1:${server.port}`;
  });
  afterAll(() => server.shutdown());

  it("reports NOT_SERVING until the service is ready, then SERVING (grpc-health-probe)", async () => {
    const before = await runCommand(tool("grpc-health-probe"), [`-addr=${address}`]);
    expect(before.code).not.toBe(0);
    expect(before.stdout + before.stderr).toMatch(/NOT_SERVING/);
    server.setReady(true);
    const after = await runCommand(tool("grpc-health-probe"), [`-addr=${address}`]);
    expect(after.stdout + after.stderr).toMatch(/status: SERVING/);
    expect(after.code).toBe(0);
  });

  it("lists the service, health and reflection to grpcurl without proto files", async () => {
    const { code, stdout } = await runCommand(tool("grpcurl"), ["-plaintext", address, "list"]);
    expect(code).toBe(0);
    expect(stdout.split("\n")).toEqual(
      expect.arrayContaining(["recsys.echo.v1.EchoService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"]),
    );
    const call = await runCommand(tool("grpcurl"), ["-plaintext", "-d", '{"message":"hello"}', address, "recsys.echo.v1.EchoService/Echo"]);
    expect(JSON.parse(call.stdout)).toEqual({ message: "hello" });
  });

  it("answers a bad request with INVALID_ARGUMENT naming the field", async () => {
    const viaGrpcurl = await runCommand(tool("grpcurl"), ["-plaintext", "-d", '{"delay_ms":-1}', address, "recsys.echo.v1.EchoService/Echo"]);
    expect(viaGrpcurl.code).not.toBe(0);
    expect(viaGrpcurl.stderr).toContain("Code: InvalidArgument");
    expect(viaGrpcurl.stderr).toMatch(/delay_ms: must be greater than or equal to 0/);

    const client = createServiceClient(EchoService, address);
    const err = await client.echo({ delayMs: 70_000 }).catch((e: unknown) => ConnectError.from(e));
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.InvalidArgument);
    const [badRequest] = (err as ConnectError).findDetails(BadRequestSchema);
    expect(badRequest?.fieldViolations[0]?.field).toBe("delay_ms");
  });

  it("counts calls by code in /metrics", async () => {
    const before = await scrape(server.metricsPort!);
    const client = createServiceClient(EchoService, address);
    await client.echo({ message: "a" });
    await client.echo({ message: "b" });
    await client.echo({ delayMs: -5 }).catch(() => undefined);
    const after = await scrape(server.metricsPort!);
    expect(counter(after, "OK") - counter(before, "OK")).toBe(2);
    expect(counter(after, "INVALID_ARGUMENT") - counter(before, "INVALID_ARGUMENT")).toBe(1);
    expect(after).toMatch(/grpc_server_handling_seconds_bucket\{.*grpc_method="Echo"/);
    expect(after).toMatch(/process_cpu_seconds_total/);
  });

  it("continues the caller's W3C trace and returns it in traceresponse", async () => {
    const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceresponse = "";
    await createServiceClient(EchoService, address).echo(
      { message: "t" },
      { headers: { traceparent: `00-${traceId}-00f067aa0ba902b7-01` }, onTrailer: (t) => (traceresponse = t.get("traceresponse") ?? "") },
    );
    expect(traceresponse).toMatch(new RegExp(`^00-${traceId}-[0-9a-f]{16}-01$`));
  });

  it("passes the caller's deadline to the handler", async () => {
    const client = createServiceClient(EchoService, address);
    const started = performance.now();
    const err = await client.echo({ delayMs: 5_000 }, { timeoutMs: 200 }).catch((e: unknown) => ConnectError.from(e));
    expect((err as ConnectError).code).toBe(Code.DeadlineExceeded);
    expect(performance.now() - started).toBeLessThan(2_000);
  });

  it("serves browsers with Connect (JSON and binary) and gRPC-web on the Connect listener", async () => {
    const baseUrl = `http://127.0.0.1:${server.connectPort}`;
    const json = await fetch(`${baseUrl}/recsys.echo.v1.EchoService/Echo`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ message: "from curl" }),
    });
    expect(await json.json()).toEqual({ message: "from curl" });

    const binary = createClient(EchoService, createConnectTransport({ baseUrl, httpVersion: "1.1", useBinaryFormat: true }));
    expect((await binary.echo({ message: "bin" })).message).toBe("bin");
    const grpcWeb = createClient(EchoService, createGrpcWebTransport({ baseUrl, httpVersion: "1.1" }));
    expect((await grpcWeb.echo({ message: "web" })).message).toBe("web");

    const invalid = await fetch(`${baseUrl}/recsys.echo.v1.EchoService/Echo`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ delayMs: -1 }),
    });
    expect(invalid.status).toBe(400);
    expect(await invalid.json()).toMatchObject({ code: "invalid_argument", message: expect.stringContaining("delay_ms") });
  });
});

describe("graceful shutdown of a service process", () => {
  it("lets an in-flight call finish on SIGTERM, refuses new calls, and exits 0", async () => {
    const port = await freePort();
    const proc = await startProcess("node", ["--import", "tsx", "services/echo/server.ts"], {
      env: { GRPC_PORT: String(port), LOG_LEVEL: "info" },
      waitFor: /"msg":"listening"/,
    });
    try {
      const client = createServiceClient(EchoService, `127.0.0.1:${port}`);
      const slow = client.echo({ message: "slow", delayMs: 1_500 });
      await new Promise((r) => setTimeout(r, 300));
      proc.child.kill("SIGTERM");
      await new Promise((r) => setTimeout(r, 200));
      const late = await client.echo({ message: "late" }).catch((e: unknown) => ConnectError.from(e));
      expect(late).toBeInstanceOf(ConnectError);
      expect((await slow).message).toBe("slow");
      expect(await proc.exited).toBe(0);
      expect(proc.output()).toMatch(/"msg":"stopped"/);
    } finally {
      await proc.stop("SIGKILL");
    }
  });
});

describe("config", () => {
  it("refuses a bad value with a message naming the variable", () => {
    expect(() => loadConfig(baseConfigShape, { GRPC_PORT: "eighty" })).toThrow(/GRPC_PORT="eighty"/);
    expect(loadConfig(baseConfigShape, {}).HOST).toBe("127.0.0.1");
  });
});
