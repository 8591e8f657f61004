import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { findTrailerError } from "@connectrpc/connect/protocol-grpc";
import { trailerParse } from "@connectrpc/connect/protocol-grpc-web";
import { EchoService } from "../../../gen/recsys/echo/v1/echo_pb.js";
import { file_recsys_feature_v1_feature } from "../../../gen/recsys/feature/v1/feature_pb.js";
import { BadRequestSchema, ErrorInfoSchema } from "../../../gen/google/rpc/error_details_pb.js";
import { Health, HealthCheckResponse_ServingStatus } from "../../../gen/grpc/health/v1/health_pb.js";
import { RawGrpcClient, frame } from "../../../test/support/fuzz-frames.js";
import { tool } from "../../../scripts/lib/tools.js";
import { freePort, runCommand, startProcess } from "../../../scripts/lib/processes.js";
import { baseConfigShape, createServiceClient, loadConfig, startServer, type RunningServer } from "../index.js";
import { echoService } from "../../echo/handlers.js";

const config = (extra: Record<string, string> = {}) =>
  loadConfig(baseConfigShape, { GRPC_PORT: "0", CONNECT_PORT: "0", METRICS_PORT: "0", LOG_LEVEL: "silent", ...extra });

async function scrape(port: number): Promise<string> {
  return (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
}

/** The ErrorInfo reason of a raw call's answer. */
function reasonOf(metadata: Headers): string | undefined {
  return findTrailerError(metadata)?.findDetails(ErrorInfoSchema)[0]?.reason;
}

const hex = (text: string) => Buffer.from(text.replace(/ /g, ""), "hex");

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
    server = await startServer({ name: "echo", config: config(), services: [echoService()], reflectAlso: [file_recsys_feature_v1_feature] });
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
    // reflectAlso: a service served elsewhere (behind the same edge) is described too.
    expect(stdout.split("\n")).toContain("recsys.feature.v1.FeatureService");
    const described = await runCommand(tool("grpcurl"), ["-plaintext", address, "describe", "recsys.feature.v1.FeatureService"]);
    expect(described.stdout).toContain("rpc GetOnlineFeatures");
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

  it("answers unreadable requests with INVALID_ARGUMENT (MALFORMED_REQUEST), never INTERNAL or UNIMPLEMENTED", async () => {
    const raw = new RawGrpcClient(address);
    const before = await scrape(server.metricsPort!);
    const echo = "/recsys.echo.v1.EchoService/Echo";
    const cases: [string, string, Buffer][] = [
      ["3 bytes that are not protobuf", echo, hex("00 00000003 ffffff")],
      ["invalid UTF-8 in a string field", echo, hex("00 00000004 0a02c328")],
      ["wrong wire type", echo, hex("00 00000002 0d01")],
      ["a truncated frame", echo, hex("00 00000010 0a")],
      ["no message", echo, Buffer.alloc(0)],
      ["two messages in a unary call", echo, Buffer.concat([frame(hex("0a0161")), frame(hex("0a0162"))])],
      ["undecodable health check", "/grpc.health.v1.Health/Check", hex("00 00000003 ffffff")],
      ["health check without a message", "/grpc.health.v1.Health/Check", Buffer.alloc(0)],
      ["undecodable reflection request", "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", hex("00 00000003 ffffff")],
    ];
    try {
      for (const [name, path, body] of cases) {
        const outcome = await raw.call(path, body);
        expect({ name, code: outcome.code, reason: reasonOf(outcome.metadata) }).toEqual({ name, code: 3, reason: "MALFORMED_REQUEST" });
      }
      expect((await raw.call(echo, frame(hex("0a026869")))).code).toBe(0);
    } finally {
      raw.close();
    }
    const after = await scrape(server.metricsPort!);
    expect(counter(after, "INVALID_ARGUMENT") - counter(before, "INVALID_ARGUMENT")).toBe(6);
    expect(counter(after, "INTERNAL")).toBe(0);
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

  it("continues the caller's W3C trace and returns it in traceresponse, sampled or not as the caller decided", async () => {
    const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
    const traceresponse = async (flags: string) => {
      let value = "";
      await createServiceClient(EchoService, address).echo(
        { message: "t" },
        { headers: { traceparent: `00-${traceId}-00f067aa0ba902b7-${flags}` }, onTrailer: (t) => (value = t.get("traceresponse") ?? "") },
      );
      return value;
    };
    expect(await traceresponse("01")).toMatch(new RegExp(`^00-${traceId}-[0-9a-f]{16}-01$`));
    // Envoy's 0% random sampling sends 00: no span is recorded, and the answer says so.
    expect(await traceresponse("00")).toMatch(new RegExp(`^00-${traceId}-[0-9a-f]{16}-00$`));
  });

  it("passes the caller's deadline to the handler", async () => {
    const client = createServiceClient(EchoService, address);
    // The client's deadline and the server's own timer race: the server ends the call
    // as DEADLINE_EXCEEDED or as CANCELLED (the client's reset), but at once, not after
    // the 5 s delay as OK. Read the server's own counts; no stopwatch.
    const ended = (m: string) => counter(m, "DEADLINE_EXCEEDED") + counter(m, "CANCELLED");
    const before = await scrape(server.metricsPort!);
    const err = await client.echo({ delayMs: 5_000 }, { timeoutMs: 200 }).catch((e: unknown) => ConnectError.from(e));
    expect((err as ConnectError).code).toBe(Code.DeadlineExceeded);
    const deadline = Date.now() + 4_000;
    while (ended(await scrape(server.metricsPort!)) === ended(before) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    const after = await scrape(server.metricsPort!);
    expect(ended(after)).toBe(ended(before) + 1);
    expect(counter(after, "OK")).toBe(counter(before, "OK"));
  });

  it("continues the caller's W3C trace on the Connect listener too, in headers and in errors", async () => {
    const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
    const post = (body: unknown) =>
      fetch(`http://127.0.0.1:${server.connectPort}/recsys.echo.v1.EchoService/Echo`, {
        method: "POST",
        headers: { "content-type": "application/json", traceparent: `00-${traceId}-00f067aa0ba902b7-01` },
        body: JSON.stringify(body),
      });
    const ok = await post({ message: "traced" });
    expect(ok.status).toBe(200);
    expect(ok.headers.get("traceresponse")).toMatch(new RegExp(`^00-${traceId}-[0-9a-f]{16}-01$`));
    const invalid = await post({ delayMs: -1 });
    expect(invalid.status).toBe(400);
    expect(invalid.headers.get("traceresponse")).toMatch(new RegExp(`^00-${traceId}-[0-9a-f]{16}-01$`));
    const unsampled = await fetch(`http://127.0.0.1:${server.connectPort}/recsys.echo.v1.EchoService/Echo`, {
      method: "POST",
      headers: { "content-type": "application/json", traceparent: `00-${traceId}-00f067aa0ba902b7-00` },
      body: JSON.stringify({ message: "not sampled" }),
    });
    expect(unsampled.headers.get("traceresponse")).toMatch(new RegExp(`^00-${traceId}-[0-9a-f]{16}-00$`));
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

  it("answers unreadable bodies on the Connect listener with invalid_argument, not internal", async () => {
    const url = `http://127.0.0.1:${server.connectPort}/recsys.echo.v1.EchoService/Echo`;
    const connectBinary = await fetch(url, { method: "POST", headers: { "content-type": "application/proto" }, body: new Uint8Array(hex("ffffff")) });
    expect(connectBinary.status).toBe(400);
    expect(await connectBinary.json()).toMatchObject({ code: "invalid_argument", message: expect.stringContaining("premature EOF") });

    const grpcWeb = async (body: Buffer) => {
      const response = await fetch(url, { method: "POST", headers: { "content-type": "application/grpc-web+proto" }, body: new Uint8Array(body) });
      const bytes = Buffer.from(await response.arrayBuffer());
      let offset = 0;
      while (bytes[offset] !== 0x80) offset += 5 + bytes.readUInt32BE(offset + 1);
      return { status: response.status, trailer: trailerParse(bytes.subarray(offset + 5)) };
    };
    for (const body of [hex("00 00000003 ffffff"), Buffer.concat([frame(hex("0a0161")), frame(hex("0a0162"))]), Buffer.alloc(0), frame(hex("0a0161"), true)]) {
      const answer = await grpcWeb(body);
      expect(answer.status).toBe(200);
      expect(answer.trailer.get("grpc-status")).toBe("3");
      expect(reasonOf(answer.trailer)).toBe("MALFORMED_REQUEST");
    }
    expect((await grpcWeb(frame(hex("0a0161")))).trailer.get("grpc-status")).toBe("0");
  });
});

describe("graceful shutdown of a service process", () => {
  it("on SIGTERM: NOT_SERVING first (Watch sees it), serves for DRAIN_MS, then refuses new calls, finishes in-flight ones, exits 0", async () => {
    const port = await freePort();
    const proc = await startProcess("node", ["--import", "tsx", "services/echo/server.ts"], {
      env: { GRPC_PORT: String(port), LOG_LEVEL: "info", DRAIN_MS: "2000" },
      waitFor: /"msg":"listening"/,
    });
    const output = (pattern: RegExp) =>
      (async () => {
        while (!pattern.test(proc.output())) await new Promise((r) => setTimeout(r, 20));
      })();
    try {
      const transport = createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` });
      const client = createServiceClient(EchoService, `127.0.0.1:${port}`);
      const watched: { status: HealthCheckResponse_ServingStatus; exited: boolean }[] = [];
      let exited = false;
      void proc.exited.then(() => (exited = true));
      const watch = (async () => {
        for await (const { status } of createClient(Health, transport).watch({ service: "" })) watched.push({ status, exited });
      })().catch(() => undefined);
      await output(/./);
      const slow = client.echo({ message: "slow", delayMs: 6_000 }, { timeoutMs: 30_000 });
      while (watched.length === 0) await new Promise((r) => setTimeout(r, 20));
      expect(watched[0]!.status).toBe(HealthCheckResponse_ServingStatus.SERVING);

      proc.child.kill("SIGTERM");
      await output(/"msg":"draining/);
      expect((await client.echo({ message: "during the drain" })).message).toBe("during the drain");
      while (watched.length < 2) await new Promise((r) => setTimeout(r, 20));
      expect(watched[1]).toEqual({ status: HealthCheckResponse_ServingStatus.NOT_SERVING, exited: false });

      await output(/"msg":"drain over/);
      const late = await client.echo({ message: "late" }).catch((e: unknown) => ConnectError.from(e));
      expect(late).toBeInstanceOf(ConnectError);
      expect((await slow).message).toBe("slow");
      expect(await proc.exited).toBe(0);
      expect(proc.output()).toMatch(/"msg":"stopped"/);
      // The open Watch ended at shutdown instead of holding it for the grace period.
      expect(proc.output()).not.toMatch(/grace period over/);
      await watch;
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
