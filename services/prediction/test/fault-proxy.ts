import { setTimeout as sleep } from "node:timers/promises";
import type { DescService } from "@bufbuild/protobuf";
import type { HandlerContext } from "@connectrpc/connect";
import { Code, ConnectError, baseConfigShape, createServiceClient, implement, loadConfig, startServer, type RunningServer } from "../../kit/index.js";

/** What the proxy does to calls of one method, or of every method ("*"). */
export interface Fault {
  /** Added before the call is forwarded (slowing a dependency). */
  delayMs?: number;
  /** Answered with this code instead of forwarding (Envoy's fast UNAVAILABLE, a crash). */
  fail?: Code;
}

export interface FaultProxy {
  address: string;
  /** Calls received, by method name ("GetCandidates"). */
  calls: Record<string, number>;
  /** Replaces the faults; {} forwards everything untouched. */
  inject(faults: Record<string, Fault>): void;
  stop(): Promise<void>;
}

/**
 * A gRPC fault injector in front of a real service: every unary method is
 * forwarded to `target` unless a fault is set for it. Tests put it between the
 * prediction service and a dependency to slow or break exactly one call.
 */
export async function startFaultProxy(service: DescService, target: string): Promise<FaultProxy> {
  const client = createServiceClient(service, target) as unknown as Record<string, (req: unknown, options: object) => Promise<unknown>>;
  const calls: Record<string, number> = {};
  let faults: Record<string, Fault> = {};
  const impl = Object.fromEntries(
    service.methods.map((method) => [
      method.localName,
      async (request: unknown, ctx: HandlerContext) => {
        calls[method.name] = (calls[method.name] ?? 0) + 1;
        const fault = faults[method.name] ?? faults["*"];
        if (fault?.delayMs) await sleep(fault.delayMs, undefined, { signal: ctx.signal });
        if (fault?.fail !== undefined) throw new ConnectError(`injected fault on ${method.name}`, fault.fail);
        return client[method.localName]!(request, { timeoutMs: ctx.timeoutMs(), signal: ctx.signal });
      },
    ]),
  );
  const config = loadConfig(baseConfigShape, { GRPC_PORT: "0", LOG_LEVEL: "silent" });
  const server: RunningServer = await startServer({ name: `fault-proxy-${service.name}`, config, services: [implement(service, impl as never)] });
  server.setReady(true);
  return {
    address: `127.0.0.1:${server.port}`,
    calls,
    inject: (next) => (faults = next),
    stop: () => server.shutdown(),
  };
}
