import { createServer, type Server } from "node:http";
import { once } from "node:events";
import type { AddressInfo } from "node:net";
import { Counter, Histogram, Registry, collectDefaultMetrics } from "prom-client";

/**
 * One registry per process. Names follow go-grpc-prometheus so standard gRPC
 * dashboards and alerts work unchanged.
 */
export const registry = new Registry();
collectDefaultMetrics({ register: registry });

export const rpcHandled = new Counter({
  name: "grpc_server_handled_total",
  help: "RPCs completed on the server, by status code.",
  labelNames: ["grpc_service", "grpc_method", "grpc_type", "grpc_code"] as const,
  registers: [registry],
});

export const rpcHandlingSeconds = new Histogram({
  name: "grpc_server_handling_seconds",
  help: "Server-side RPC latency until the status is sent.",
  labelNames: ["grpc_service", "grpc_method", "grpc_type"] as const,
  buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
  registers: [registry],
});

/** Serves GET /metrics for Prometheus; resolves with the bound port. */
export async function startMetricsServer(host: string, port: number): Promise<{ server: Server; port: number }> {
  const server = createServer((req, res) => {
    if (req.url !== "/metrics") {
      res.writeHead(404).end();
      return;
    }
    registry.metrics().then(
      (body) => res.writeHead(200, { "content-type": registry.contentType }).end(body),
      (err: unknown) => res.writeHead(500).end(String(err)),
    );
  });
  server.listen(port, host);
  await once(server, "listening");
  return { server, port: (server.address() as AddressInfo).port };
}
