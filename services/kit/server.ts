import { createServer as createHttpServer, type Server as HttpServer } from "node:http";
import { once } from "node:events";
import { createRequire } from "node:module";
import type { AddressInfo } from "node:net";
import * as grpc from "@grpc/grpc-js";
import { toBinary, type DescFile } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import * as protoLoader from "@grpc/proto-loader";
import { ReflectionService } from "@grpc/reflection";
import { HealthImplementation, service as healthService, type ServingStatus } from "grpc-health-check";
import type { BaseConfig } from "./config.js";
import { connectRequestHandler } from "./connect.js";
import { grpcService, tolerantDefinition, type ServiceRegistration } from "./grpc.js";
import { createLogger, type Logger } from "./log.js";
import { startMetricsServer } from "./metrics.js";
import { requestGuard } from "./request-guard.js";
import { initTracing, shutdownTracing } from "./tracing.js";
import { file_google_rpc_error_details } from "../../gen/google/rpc/error_details_pb.js";
import { file_grpc_health_v1_health } from "../../gen/grpc/health/v1/health_pb.js";

const require = createRequire(import.meta.url);

export interface ServerOptions {
  /** Service name for logs, metrics and traces ("prediction"). */
  name: string;
  config: BaseConfig;
  services: ServiceRegistration[];
  log?: Logger;
  /** Called after the listeners stop, before exit: close Redis, flush queues. */
  onShutdown?: () => Promise<void>;
  /**
   * Proto files of services served elsewhere that reflection describes too: the
   * edge routes reflection to one service, so that one describes the whole public
   * API and grpcurl needs no proto files for any service behind the edge.
   */
  reflectAlso?: DescFile[];
}

export interface RunningServer {
  port: number;
  connectPort?: number;
  metricsPort?: number;
  log: Logger;
  /** Readiness for every service of this process, reported by grpc.health.v1; ignored once draining. */
  setReady(ready: boolean): void;
  /** Stops accepting, drains in-flight calls (up to SHUTDOWN_GRACE_MS), then closes. */
  shutdown(): Promise<void>;
  /**
   * What SIGTERM does: health turns NOT_SERVING (Check and Watch) at once, calls are
   * still served for DRAIN_MS so load balancers see it, then shutdown().
   */
  drain(): Promise<void>;
}

/**
 * Every file the services' descriptors need, dependencies first, plus health and
 * the error details we send, for reflection.
 */
function descriptorSet(services: ServiceRegistration[], also: DescFile[]): Buffer[] {
  const seen = new Map<string, Buffer>();
  const visit = (file: DescFile) => {
    if (seen.has(file.name)) return;
    file.dependencies.forEach(visit);
    seen.set(file.name, Buffer.from(toBinary(FileDescriptorProtoSchema, file.proto)));
  };
  services.forEach(({ service }) => visit(service.file));
  also.forEach(visit);
  visit(file_grpc_health_v1_health);
  visit(file_google_rpc_error_details);
  return [...seen.values()];
}

/**
 * gRPC server reflection (v1 and v1alpha) over our services plus the health and
 * reflection services themselves, so grpcurl needs no proto files. Our files come
 * from the generated descriptors; proto-loader's would mangle map fields.
 */
function addReflection(server: Pick<grpc.Server, "addService">, services: ServiceRegistration[], also: DescFile[]) {
  const reflectionDir = require.resolve("@grpc/reflection").replace(/build\/src\/index\.js$/, "build/proto");
  const standard = protoLoader.loadSync(["grpc/reflection/v1/reflection.proto"], { includeDirs: [reflectionDir] });
  const ours = {
    "recsys.descriptors": { format: "Protocol Buffer 3 DescriptorProto", type: {}, fileDescriptorProtos: descriptorSet(services, also) },
  } as unknown as protoLoader.PackageDefinition;
  new ReflectionService({ ...standard, ...ours }).addToServer(server as grpc.Server);
}

async function listenHttp(server: HttpServer, host: string, port: number): Promise<number> {
  server.listen(port, host);
  await once(server, "listening");
  return (server.address() as AddressInfo).port;
}

/**
 * Starts a service process the one way every recsys service starts: grpc-js
 * listener with health, reflection, validation, tracing and metrics; optional
 * Connect/gRPC-web listener for browsers; optional /metrics listener. Health says
 * NOT_SERVING until the service calls setReady(true).
 */
export async function startServer(options: ServerOptions): Promise<RunningServer> {
  const { name, config, services } = options;
  const log = options.log ?? createLogger(name, config.LOG_LEVEL);
  initTracing(name, config.OTEL_EXPORTER_OTLP_ENDPOINT);

  const pipelinePaths = new Set(services.flatMap(({ service }) => service.methods.map((m) => `/${service.typeName}/${m.name}`)));
  const server = new grpc.Server({
    "grpc.max_receive_message_length": 16 * 1024 * 1024,
    "grpc.keepalive_permit_without_calls": 1,
    interceptors: [requestGuard(pipelinePaths, log)],
  });
  for (const registration of services) {
    const { definition, handlers } = grpcService(registration, log);
    server.addService(definition, handlers);
  }
  const statuses: Record<string, ServingStatus> = { "": "NOT_SERVING" };
  for (const { service } of services) statuses[service.typeName] = "NOT_SERVING";
  const health = new HealthImplementation(statuses);
  // Health and reflection come from libraries; their undecodable requests reach the guard too.
  const tolerant = { addService: (definition: grpc.ServiceDefinition, impl: grpc.UntypedServiceImplementation) => server.addService(tolerantDefinition(definition), impl) };
  // Open Watch streams are ended at shutdown, after they saw NOT_SERVING: they
  // would otherwise hold tryShutdown for the whole grace period.
  const watches = new Set<grpc.ServerWritableStream<unknown, unknown>>();
  health.addToServer({
    addService: (definition: grpc.ServiceDefinition, impl: grpc.UntypedServiceImplementation) => {
      const watch = impl.watch as grpc.handleServerStreamingCall<unknown, unknown>;
      const tracked: grpc.handleServerStreamingCall<unknown, unknown> = (call) => {
        watches.add(call);
        call.on("close", () => watches.delete(call));
        watch(call);
      };
      tolerant.addService(definition, definition === healthService ? { ...impl, watch: tracked } : impl);
    },
  } as grpc.Server);
  addReflection(tolerant, services, options.reflectAlso ?? []);

  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`${config.HOST}:${config.GRPC_PORT}`, grpc.ServerCredentials.createInsecure(), (err, bound) =>
      err ? reject(new Error(`${name}: cannot listen on ${config.HOST}:${config.GRPC_PORT}: ${err.message}`)) : resolve(bound),
    ),
  );

  let connectServer: HttpServer | undefined;
  let connectPort: number | undefined;
  if (config.CONNECT_PORT !== undefined) {
    connectServer = createHttpServer(connectRequestHandler(services));
    connectPort = await listenHttp(connectServer, config.HOST, config.CONNECT_PORT);
  }
  const metrics = config.METRICS_PORT !== undefined ? await startMetricsServer(config.HOST, config.METRICS_PORT) : undefined;

  let draining = false;
  const setReady = (ready: boolean) => {
    if (draining && ready) return;
    for (const key of Object.keys(statuses)) health.setStatus(key, ready ? "SERVING" : "NOT_SERVING");
  };

  let stopping: Promise<void> | undefined;
  const shutdown = () =>
    (stopping ??= (async () => {
      setReady(false);
      const drained = new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
      for (const watch of watches) watch.end();
      const timer = setTimeout(() => {
        log.warn({ graceMs: config.SHUTDOWN_GRACE_MS }, "grace period over, cancelling in-flight calls");
        server.forceShutdown();
      }, config.SHUTDOWN_GRACE_MS);
      connectServer?.close();
      await drained;
      clearTimeout(timer);
      connectServer?.closeAllConnections();
      metrics?.server.close();
      await options.onShutdown?.();
      await shutdownTracing();
      log.info("stopped");
    })());

  const drain = async () => {
    setReady(false);
    draining = true;
    log.info({ drainMs: config.DRAIN_MS }, "draining: NOT_SERVING, still serving calls");
    await new Promise((resolve) => setTimeout(resolve, config.DRAIN_MS));
    log.info("drain over: no new calls, finishing in-flight ones");
    await shutdown();
  };

  log.info({ port, connectPort, metricsPort: metrics?.port }, "listening");
  return { port, connectPort, metricsPort: metrics?.port, log, setReady, shutdown, drain };
}

/**
 * For a service's entry point: SIGTERM and SIGINT drain (NOT_SERVING for DRAIN_MS,
 * then stop accepting and finish in-flight calls) and exit 0; a second signal exits at once.
 */
export function exitOnSignals(running: RunningServer): void {
  let signalled = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (signalled) process.exit(1);
    signalled = true;
    running.log.info({ signal }, "shutting down");
    running.drain().then(
      () => process.exit(0),
      (err: unknown) => {
        running.log.error({ err }, "shutdown failed");
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", onSignal);
  process.on("SIGINT", onSignal);
}
