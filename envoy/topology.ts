// The one source of truth for the mesh: which services exist, which instances, who
// calls whom, the ports, and the network policies. envoy/render.ts renders
// every Envoy config (local and Kubernetes) from this file; scripts/start.ts and the
// k8s manifests read the same ports. Edit here, then `npm run render`. Plain data: it
// reads no environment, so every render of it is the same.

/** How callers reach a service: applied on the callers' egress listeners. */
export interface CallPolicy {
  /** Route timeout when the caller sends no grpc-timeout. */
  timeoutMs: number;
  /** Upper bound on the caller's grpc-timeout. */
  maxGrpcTimeoutMs: number;
  retries: number;
  /** Give up on one attempt after this long and retry; unset: attempts end only with the call. */
  perTryTimeoutMs?: number;
  /** Send a second attempt when a try passes perTryTimeoutMs (idempotent reads only). */
  hedge: boolean;
  circuit: { maxConnections: number; maxPendingRequests: number; maxRequests: number; maxRetries: number };
  /**
   * Outlier ejection (envoy/render.ts explains what counts as a failure):
   * consecutive UNAVAILABLE/DEADLINE_EXCEEDED answers or connection failures of one
   * host, never a client's bad input; at most maxEjectionPercent of the hosts.
   */
  outlier: { consecutiveGatewayFailure: number; intervalMs: number; baseEjectionMs: number; maxEjectionPercent: number };
}

/** What the edge accepts for a service's methods before it reaches an instance. */
export interface EdgeLimits {
  /** Largest request body, bytes (the edge buffers a unary request up to this). */
  maxRequestBytes: number;
  /** Tighter or looser limits for single methods, by method name. */
  methodMaxRequestBytes?: Record<string, number>;
  /** Client-streaming methods: never buffered; bounded by stream_idle_timeout and the app's message size. */
  streamingMethods?: string[];
}

export interface ServiceSpec {
  name: string;
  /** Fully-qualified gRPC services it serves (route prefixes). */
  grpcServices: string[];
  /** Deployed versions; each gets its own app process and sidecar. */
  versions: string[];
  /** Services it calls, each through an egress listener of its sidecar. */
  upstreams: string[];
  /** Serves Connect (JSON and binary) for browsers on a second app listener. */
  connect: boolean;
  /** Per-instance cap at the sidecar's ingress, requests per second. */
  ingressRps: number;
  call: CallPolicy;
  edgeLimits: EdgeLimits;
}

const read: CallPolicy = {
  timeoutMs: 1000,
  maxGrpcTimeoutMs: 5000,
  retries: 2,
  perTryTimeoutMs: 250,
  hedge: true,
  circuit: { maxConnections: 1024, maxPendingRequests: 1024, maxRequests: 2048, maxRetries: 64 },
  // At most half the hosts: outlier detection compares a host with its peers, and a
  // service whose only host fails some calls keeps that host (30% chaos aborts must
  // not turn into 100% "no healthy upstream"). A host that is down fails its active
  // health checks instead.
  outlier: { consecutiveGatewayFailure: 5, intervalMs: 1000, baseEjectionMs: 5000, maxEjectionPercent: 50 },
};

const MiB = 1024 * 1024;
/** gRPC's own default limit for a received message. */
const defaultEdge: EdgeLimits = { maxRequestBytes: 4 * MiB };

export const services: ServiceSpec[] = [
  {
    name: "prediction",
    grpcServices: ["recsys.prediction.v1.PredictionService"],
    versions: ["v1", "v2"],
    upstreams: ["experiment", "feature", "retrieval"],
    connect: true,
    ingressRps: 20000,
    // One retry, on the other version (the edge's failover). No per-try timeout: a
    // slow version is still answering, and giving up on it to retry elsewhere would
    // double the work just when the machine is short of it; a dead or refusing
    // version fails fast and is retried.
    call: { ...read, timeoutMs: 2000, retries: 1, perTryTimeoutMs: undefined, hedge: false },
    // Predict's largest valid request: 1,000 candidate ids of 128 bytes plus context, as JSON.
    edgeLimits: { ...defaultEdge, methodMaxRequestBytes: { Predict: 256 * 1024 } },
  },
  {
    name: "feature",
    grpcServices: ["recsys.feature.v1.FeatureService"],
    versions: ["v1"],
    upstreams: [],
    connect: true,
    ingressRps: 50000,
    call: read,
    edgeLimits: { ...defaultEdge, streamingMethods: ["IngestEventStream"] },
  },
  {
    name: "retrieval",
    grpcServices: ["recsys.retrieval.v1.RetrievalService"],
    versions: ["v1"],
    upstreams: [],
    connect: true,
    ingressRps: 50000,
    call: read,
    edgeLimits: defaultEdge,
  },
  {
    name: "experiment",
    grpcServices: ["recsys.experiment.v1.ExperimentService"],
    versions: ["v1"],
    upstreams: [],
    connect: true,
    ingressRps: 50000,
    call: read,
    edgeLimits: defaultEdge,
  },
  {
    name: "echo",
    grpcServices: ["recsys.echo.v1.EchoService"],
    versions: ["v1"],
    upstreams: [],
    connect: true,
    ingressRps: 100000,
    // The benchmark baseline: no per-try timeout or hedging, so the mesh's cost is
    // measured without policies that would add or drop attempts under load.
    call: { ...read, timeoutMs: 5000, retries: 3, perTryTimeoutMs: 5000, hedge: false },
    edgeLimits: defaultEdge,
  },
];

/**
 * Rate limits per user tier at the edge, per user: the tier is the verified token's
 * `tier` claim (jwt_authn), never a header the client wrote. envoyproxy/ratelimit
 * counts them in fixed one-second windows (scripts/lib/ratelimit.ts renders its config).
 */
export const tiers = [
  { tier: "free", rps: 50 },
  { tier: "premium", rps: 500 },
  { tier: "enterprise", rps: 5000 },
];
/**
 * Every request through one edge process, whoever sends it: a local token bucket
 * behind the global rate limit, which fails open when its service does not answer.
 */
export const edgeBackstopRps = 20000;

/**
 * What one client may hold at the edge. A connection with no request in flight is
 * closed after idleTimeoutMs; a request whose headers have not all arrived after
 * requestHeadersTimeoutMs gets 408 and its connection closes; a stream with no
 * bytes either way for streamIdleTimeoutMs is reset. maxConnections bounds the edge
 * listener (the overload manager bounds the whole process at globalMaxConnections).
 */
export const edgeProtection = {
  idleTimeoutMs: 15_000,
  requestHeadersTimeoutMs: 5_000,
  streamIdleTimeoutMs: 30_000,
  maxConcurrentStreams: 100,
  maxRequestHeadersKb: 32,
  maxHeadersCount: 64,
  maxConnections: 10_000,
  globalMaxConnections: 20_000,
  // Below the edge pod's 512Mi limit (k8s/workloads.ts): past 90% of it the edge
  // shortens idle timeouts, past 98% it refuses new requests with RESOURCE_EXHAUSTED.
  maxHeapBytes: 400 * MiB,
};

/** Where things listen. Local: one loopback port each. Kubernetes: the same ports in every pod. */
export interface Ports {
  edge: number;
  edgeAdmin: number;
  /** envoyproxy/ratelimit's gRPC port (the edges' global rate limit). */
  rateLimitGrpc: number;
  app(service: string, version: string): number;
  appConnect(service: string, version: string): number;
  appMetrics(service: string, version: string): number;
  ingress(service: string, version: string): number;
  sidecarAdmin(service: string, version: string): number;
  egress(service: string, version: string, upstream: string): number;
}

const index = (name: string) => services.findIndex((s) => s.name === name);
const slot = (service: string, version: string) => index(service) * 10 + services[index(service)]!.versions.indexOf(version);

// Every local port sits below 32768: Linux hands out ephemeral source ports from
// 32768-60999 (IANA: 49152-65535), and a listener there can find its port taken by
// some outgoing connection made during start-up.
export const localPorts: Ports & { rateLimitHttp: number; rateLimitDebug: number; webConsole: number } = {
  edge: 8080,
  edgeAdmin: 9901,
  rateLimitGrpc: 18081,
  rateLimitHttp: 18080,
  rateLimitDebug: 16070,
  /** The web console (scripts/lib/web.ts): the one origin the edge's CORS policy grants. */
  webConsole: 8088,
  app: (s, v) => 20100 + slot(s, v),
  appConnect: (s, v) => 20200 + slot(s, v),
  appMetrics: (s, v) => 20300 + slot(s, v),
  ingress: (s, v) => 15100 + slot(s, v),
  sidecarAdmin: (s, v) => 15300 + slot(s, v),
  egress: (s, v, u) => 15500 + slot(s, v) * 10 + index(u),
};

/**
 * The trace and metrics backends `npm run observe` runs on loopback (scripts/observe.ts):
 * Zipkin, whose span API every Envoy's tracer and every app's exporter send to, and
 * Prometheus. Off the usual 9411/9090, so a developer's own Zipkin or Prometheus
 * keeps its port.
 */
export const observePorts = { zipkin: 19411, prometheus: 19090 };

/**
 * Percent of requests arriving without a sampled trace context that an Envoy traces
 * (its runtime key tracing.random_sampling, in hundredths of a percent there). The
 * apps follow the sampled flag Envoy passes on. Local: none until `npm run observe`
 * raises it to 100 on every Envoy, so a mesh without a trace backend sends no spans;
 * Kubernetes: a ratio.
 */
export const traceSamplePercent = { local: 0, k8s: 1, observe: 100 };

/**
 * Percent of successful, fast, untraced calls an Envoy writes an access log line for
 * (runtime key access_log.sample_percent). Failures (HTTP 400 and up, an Envoy response
 * flag, a gRPC status other than OK), calls slower than access_log.min_duration_ms (1 s)
 * and traced calls are always logged. A line for every call cost 2-10% of the Envoys'
 * CPU; `npm run observe` logs every call, next to its traces.
 */
export const accessLogSamplePercent = { local: 1, k8s: 1, observe: 100 };

/** The Redis `npm start` runs when no REDIS_URL is given (REDIS_PORT moves it: scripts/lib/mesh.ts). */
export const localRedisPort = 6390;

/** Every loopback port the local mesh listens on, with what listens there. */
export function localListeners(): { port: number; what: string }[] {
  const list = [
    { port: localPorts.edge, what: "edge" },
    { port: localPorts.edgeAdmin, what: "edge admin" },
    { port: localRedisPort, what: "redis" },
    { port: localPorts.rateLimitGrpc, what: "ratelimit (gRPC)" },
    { port: localPorts.rateLimitHttp, what: "ratelimit (HTTP)" },
    { port: localPorts.rateLimitDebug, what: "ratelimit (debug)" },
    { port: localPorts.webConsole, what: "web console" },
  ];
  for (const { service: spec, version, id } of instances) {
    list.push(
      { port: localPorts.app(spec.name, version), what: `${id} app (gRPC)` },
      { port: localPorts.appMetrics(spec.name, version), what: `${id} app (metrics)` },
      { port: localPorts.ingress(spec.name, version), what: `${id} sidecar ingress` },
      { port: localPorts.sidecarAdmin(spec.name, version), what: `${id} sidecar admin` },
      ...spec.upstreams.map((u) => ({ port: localPorts.egress(spec.name, version, u), what: `${id} sidecar egress to ${u}` })),
    );
    if (spec.connect) list.push({ port: localPorts.appConnect(spec.name, version), what: `${id} app (Connect)` });
  }
  return list;
}

export const podPorts: Ports = {
  edge: 8080,
  edgeAdmin: 9901,
  // envoyproxy/ratelimit's own default, in its own pod.
  rateLimitGrpc: 8081,
  app: () => 50051,
  appConnect: () => 50052,
  appMetrics: () => 9090,
  ingress: () => 15006,
  sidecarAdmin: () => 15000,
  egress: (_s, _v, u) => 15001 + index(u),
};

export function service(name: string): ServiceSpec {
  const found = services.find((s) => s.name === name);
  if (!found) throw new Error(`unknown service ${name}`);
  return found;
}

/**
 * An instance's name: the service's, with the version when it has more than one
 * (prediction-v1). It names the app and its sidecar config, the image, and the
 * Kubernetes Service and workload.
 */
export const instanceId = (spec: ServiceSpec, version: string) => (spec.versions.length > 1 ? `${spec.name}-${version}` : spec.name);

export const instances = services.flatMap((s) => s.versions.map((version) => ({ service: s, version, id: instanceId(s, version) })));

/** An app's upstream addresses (FEATURE_ADDR, ...): its own sidecar's egress listeners, locally and in a pod. */
export function upstreamEnv(ports: Ports, spec: ServiceSpec, version: string, upstreams = spec.upstreams): Record<string, string> {
  return Object.fromEntries(upstreams.map((u) => [`${u.toUpperCase()}_ADDR`, `127.0.0.1:${ports.egress(spec.name, version, u)}`]));
}
