import { setTimeout as sleep } from "node:timers/promises";
import type { DescService } from "@bufbuild/protobuf";
import type { HandlerContext } from "@connectrpc/connect";
import { seededRandom } from "../../../test/support/random.js";
import { Code, ConnectError, baseConfigShape, createServiceClient, implement, loadConfig, startServer, type RunningServer } from "../../kit/index.js";

/** What the proxy does to calls of one method, or of every method ("*"). */
export interface Fault {
  /** Added before the call is forwarded (slowing a dependency). */
  delayMs?: number;
  /** Held until release() (or the caller's deadline) before it is forwarded: a dependency that is slow for exactly as long as a test needs. */
  hold?: boolean;
  /** Answered with this code instead of forwarding (Envoy's fast UNAVAILABLE, a crash). */
  fail?: Code;
  /** With `fail`: the share of calls that fail, drawn from a generator seeded at inject() (reproducible); default every call. */
  failRatio?: number;
}

export interface FaultProxy {
  address: string;
  /** Calls received, by method name ("GetCandidates"). */
  calls: Record<string, number>;
  /** Calls answered with an injected failure, by method name. */
  failed: Record<string, number>;
  /** Replaces the faults; {} forwards everything untouched (held calls stay held until release()). */
  inject(faults: Record<string, Fault>): void;
  /** Resolves once at least `n` calls are being held. */
  whenHeld(n: number): Promise<void>;
  /** Lets every held call go on. */
  release(): void;
  stop(): Promise<void>;
}

/**
 * A gRPC fault injector in front of a real service: every unary method is
 * forwarded to `target` unless a fault is set for it. Tests put it between the
 * prediction service and a dependency to slow, hold or break exactly one call.
 */
export async function startFaultProxy(service: DescService, target: string): Promise<FaultProxy> {
  const client = createServiceClient(service, target) as unknown as Record<string, (req: unknown, options: object) => Promise<unknown>>;
  const calls: Record<string, number> = {};
  const failed: Record<string, number> = {};
  let faults: Record<string, Fault> = {};
  let random = seededRandom(1);
  let held: (() => void)[] = [];
  let heldWaiters: { n: number; resolve: () => void }[] = [];
  const onHeldChange = () => {
    heldWaiters = heldWaiters.filter((w) => (held.length >= w.n ? (w.resolve(), false) : true));
  };
  const holdUntilReleased = (signal: AbortSignal) =>
    new Promise<void>((resolve) => {
      const release = () => {
        held = held.filter((r) => r !== release);
        signal.removeEventListener("abort", release);
        resolve();
      };
      signal.addEventListener("abort", release);
      held.push(release);
      onHeldChange();
    });
  const impl = Object.fromEntries(
    service.methods.map((method) => [
      method.localName,
      async (request: unknown, ctx: HandlerContext) => {
        calls[method.name] = (calls[method.name] ?? 0) + 1;
        const fault = faults[method.name] ?? faults["*"];
        if (fault?.hold) await holdUntilReleased(ctx.signal);
        if (fault?.delayMs) await sleep(fault.delayMs, undefined, { signal: ctx.signal });
        if (fault?.fail !== undefined && random() < (fault.failRatio ?? 1)) {
          failed[method.name] = (failed[method.name] ?? 0) + 1;
          throw new ConnectError(`injected fault on ${method.name}`, fault.fail);
        }
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
    failed,
    inject: (next) => {
      faults = next;
      random = seededRandom(1);
    },
    whenHeld: (n) =>
      new Promise<void>((resolve) => {
        heldWaiters.push({ n, resolve });
        onHeldChange();
      }),
    release: () => {
      for (const release of [...held]) release();
    },
    stop: () => server.shutdown(),
  };
}
