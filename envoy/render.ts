// Renders every Envoy config from envoy/topology.ts: one sidecar per service
// instance and the edge, for local runs (envoy/local/) and Kubernetes (envoy/k8s/).
//   npx tsx envoy/render.ts          write the files
//   npx tsx envoy/render.ts --check  exit 1 when a committed file is stale
import { mkdirSync, readFileSync, existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { stringify } from "yaml";
import { instanceId, instances, localPorts, observePorts, podPorts, service, services, edgeBackstopRps, edgeProtection, traceSamplePercent, accessLogSamplePercent, type Ports, type ServiceSpec } from "./topology.js";
import {
  corsPolicy,
  downstreamTls,
  edgeAuthFilters,
  edgeIdentity,
  edgeManagerOptions,
  globalRateLimitFilter,
  rateLimitCluster,
  sidecarIngressManagerOptions,
  sidecarPeers,
  sidecarRbacFilter,
  upstreamTls,
} from "./security.js";
import { pkiLayout, type Pki } from "../scripts/lib/pki.js";
import { MIRRORED_AUTHORITY } from "../services/prediction/shadow.js";
import { ROOT } from "../scripts/lib/tools.js";

type Target = "local" | "k8s";
type Obj = Record<string, unknown>;

interface Placement {
  ports: Ports;
  /** Address a listener that other hosts reach binds to. */
  publicBind: string;
  /** Address and discovery type of an instance's sidecar ingress. */
  ingressOf(service: string, version: string): { address: string; port: number; type: "STATIC" | "STRICT_DNS" };
  /** An HTTP connection manager's access_log setting. */
  accessLog(id: string): Obj[];
  /** Where each Envoy finds its certificate, the CA and the JWKS (scripts/lib/pki.ts's layout). */
  pki: Pki;
  /** The envoyproxy/ratelimit service the edge asks. */
  rateLimit: { address: string; port: number; type: "STATIC" | "STRICT_DNS" };
  /** The Zipkin collector every Envoy sends its spans to, and the share of requests it traces. */
  zipkin: { address: string; port: number; type: "STATIC" | "STRICT_DNS" };
  traceSamplePercent: number;
}

const placements: Record<Target, Placement> = {
  local: {
    ports: localPorts,
    publicBind: "127.0.0.1",
    ingressOf: (s, v) => ({ address: "127.0.0.1", port: localPorts.ingress(s, v), type: "STATIC" }),
    accessLog: (id) => accessLog(`.run/logs/envoy-${id}.access.log`, accessLogSamplePercent.local),
    // Relative, like the logs: Envoy runs with the repository as its working directory.
    pki: pkiLayout(".run/pki"),
    rateLimit: { address: "127.0.0.1", port: localPorts.rateLimitGrpc, type: "STATIC" },
    zipkin: { address: "127.0.0.1", port: observePorts.zipkin, type: "STATIC" },
    traceSamplePercent: traceSamplePercent.local,
  },
  k8s: {
    ports: podPorts,
    publicBind: "0.0.0.0",
    // One headless Service per version, so Envoy balances and ejects per pod.
    ingressOf: (s, v) => ({
      address: `${instanceId(service(s), v)}.recsys.svc.cluster.local`,
      port: podPorts.ingress(s, v),
      type: "STRICT_DNS",
    }),
    accessLog: () => accessLog("stdout", accessLogSamplePercent.k8s),
    // Secrets mounted per identity (k8s/render.ts).
    pki: pkiLayout("/etc/recsys/pki"),
    rateLimit: { address: "ratelimit.recsys.svc.cluster.local", port: podPorts.rateLimitGrpc, type: "STRICT_DNS" },
    // Zipkin (or any collector with Zipkin's span API) in the monitoring namespace.
    zipkin: { address: "zipkin.monitoring.svc.cluster.local", port: 9411, type: "STRICT_DNS" },
    traceSamplePercent: traceSamplePercent.k8s,
  },
};

const type = (name: string) => `type.googleapis.com/${name}`;
const socket = (address: string, port: number) => ({ socket_address: { address, port_value: port } });
const ms = (n: number) => `${n / 1000}s`;

function http2Options(): Obj {
  return {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
      "@type": type("envoy.extensions.upstreams.http.v3.HttpProtocolOptions"),
      explicit_http_config: { http2_protocol_options: { max_concurrent_streams: 1000 } },
    },
  };
}

/**
 * JSON access log lines to a file (local) or to stdout (Kubernetes: path "stdout"): every
 * failed, slow or traced call, and samplePercent of the rest (accessLogSamplePercent in
 * topology.ts). A gRPC status is only judged on gRPC calls: Envoy infers UNKNOWN for a
 * Connect or gRPC-web answer that carries none in its headers, even a successful one;
 * those fail with an HTTP status (Connect) or are judged as gRPC behind the edge (gRPC-web).
 */
function accessLog(path: string, samplePercent: number): Obj[] {
  const sink =
    path === "stdout"
      ? { name: "envoy.access_loggers.stdout", "@type": type("envoy.extensions.access_loggers.stream.v3.StdoutAccessLog") }
      : { name: "envoy.access_loggers.file", "@type": type("envoy.extensions.access_loggers.file.v3.FileAccessLog"), path };
  const { name, ...config } = sink;
  return [
    {
      name,
      filter: {
        or_filter: {
          filters: [
            { status_code_filter: { comparison: { op: "GE", value: { default_value: 400, runtime_key: "access_log.min_status" } } } },
            { response_flag_filter: {} },
            { duration_filter: { comparison: { op: "GE", value: { default_value: 1000, runtime_key: "access_log.min_duration_ms" } } } },
            { runtime_filter: { runtime_key: "access_log.sample_percent", percent_sampled: { numerator: samplePercent, denominator: "HUNDRED" } } },
            // Sampled by the tracer (the header as Envoy passes it on): a trace leads to its lines.
            { header_filter: { header: { name: "traceparent", string_match: { suffix: "-01" } } } },
            {
              and_filter: {
                filters: [
                  { header_filter: { header: { name: "content-type", string_match: { safe_regex: { regex: "^application/grpc(\\+[a-z]+)?(;.*)?$" } } } } },
                  { grpc_status_filter: { statuses: ["OK"], exclude: true } },
                ],
              },
            },
          ],
        },
      },
      typed_config: {
        ...config,
        log_format: {
          json_format: {
            time: "%START_TIME%",
            method: "%REQ(:PATH)%",
            grpc_status: "%GRPC_STATUS(NUMBER)%",
            response_code: "%RESPONSE_CODE%",
            flags: "%RESPONSE_FLAGS%",
            duration_ms: "%DURATION%",
            upstream: "%UPSTREAM_HOST%",
            attempts: "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
            trace: "%REQ(TRACEPARENT)%",
            trace_id: "%TRACE_ID%",
          },
        },
      },
    },
  ];
}

function hcm(statPrefix: string, routeConfig: Obj, httpFilters: Obj[], accessLogs: Obj[], options: Obj = {}): Obj {
  return {
    name: "envoy.filters.network.http_connection_manager",
    typed_config: {
      "@type": type("envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"),
      stat_prefix: statPrefix,
      codec_type: "AUTO",
      ...options,
      http2_protocol_options: { max_concurrent_streams: 1000 },
      access_log: accessLogs,
      route_config: routeConfig,
      http_filters: [...httpFilters, { name: "envoy.filters.http.router", typed_config: { "@type": type("envoy.extensions.filters.http.router.v3.Router") } }],
    },
  };
}

/** INBOUND listeners make server spans, OUTBOUND ones client spans. */
function listener(name: string, direction: "INBOUND" | "OUTBOUND", address: string, port: number, manager: Obj, transportSocket?: Obj): Obj {
  return {
    name,
    address: socket(address, port),
    traffic_direction: direction,
    filter_chains: [{ filters: [manager], ...(transportSocket ? { transport_socket: transportSocket } : {}) }],
  };
}

const zipkinClusterName = "zipkin";

/**
 * A route's span name (by default Envoy names a span after the Host header, here
 * always an address). Not propagated: each Envoy names its own spans.
 */
const spanName = (operation: string): Obj => ({ decorator: { operation, propagate: false } });

/**
 * A span for every request through a connection manager, sent to Zipkin. Envoy
 * reads and writes W3C traceparent (and B3 beside it), so one trace runs from the
 * edge through every sidecar and app; trace ids are 128-bit, as W3C's are. Which
 * requests are traced: those that arrive with a sampled trace context, and
 * random_sampling percent of the rest (runtime key tracing.random_sampling, which
 * `npm run observe` raises). Each hop's span is its own (no shared span context).
 */
function tracing(place: Placement): Obj {
  return {
    random_sampling: { value: place.traceSamplePercent },
    provider: {
      name: "envoy.tracers.zipkin",
      typed_config: {
        "@type": type("envoy.config.trace.v3.ZipkinConfig"),
        collector_cluster: zipkinClusterName,
        collector_endpoint: "/api/v2/spans",
        collector_endpoint_version: "HTTP_JSON",
        trace_id_128bit: true,
        shared_span_context: false,
        trace_context_option: "USE_B3_WITH_W3C_PROPAGATION",
      },
    },
  };
}

/**
 * Zipkin's collector. A static cluster: Envoy starts whether or not Zipkin runs, and
 * spans it cannot deliver are dropped (counted in tracing.zipkin.reports_dropped).
 */
function zipkinCluster(place: Placement): Obj {
  const { address, port, type: discovery } = place.zipkin;
  return {
    name: zipkinClusterName,
    type: discovery,
    connect_timeout: "1s",
    load_assignment: { cluster_name: zipkinClusterName, endpoints: [{ lb_endpoints: [{ endpoint: { address: socket(address, port) } }] }] },
  };
}

function tokenBucket(rps: number, burst = rps): Obj {
  return { max_tokens: burst, tokens_per_fill: rps, fill_interval: "1s" };
}

const always = { default_value: { numerator: 100, denominator: "HUNDRED" } };

function localRateLimit(statPrefix: string, rps: number): Obj {
  return {
    name: "envoy.filters.http.local_ratelimit",
    typed_config: {
      "@type": type("envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"),
      stat_prefix: statPrefix,
      token_bucket: tokenBucket(rps),
      filter_enabled: { ...always, runtime_key: `${statPrefix}.enabled` },
      filter_enforced: { ...always, runtime_key: `${statPrefix}.enforced` },
      // gRPC callers see RESOURCE_EXHAUSTED, not UNAVAILABLE (which they would retry
      // at once); gRPC-web and Connect callers get theirs from the edge's local reply
      // mappers. Buckets refill every second: that is when a retry can succeed.
      rate_limited_as_resource_exhausted: true,
      response_headers_to_add: [
        { header: { key: "retry-after", value: "1" } },
        { header: { key: "grpc-retry-pushback-ms", value: "1000" } },
      ],
    },
  };
}

/**
 * Fault injection at a sidecar's ingress, two ways: per request with
 * x-envoy-fault-* headers (from inside the mesh; the edge strips them), and for
 * all traffic through runtime keys chaos.* set on the sidecar's admin API
 * (/runtime_modify?chaos.abort_percent=30), for chaos runs and canary drills.
 */
function faultInjection(): Obj[] {
  const hundred = { numerator: 100, denominator: "HUNDRED" };
  return [
    {
      name: "envoy.filters.http.fault",
      typed_config: {
        "@type": type("envoy.extensions.filters.http.fault.v3.HTTPFault"),
        abort: { header_abort: {}, percentage: hundred },
        delay: { header_delay: {}, percentage: hundred },
        max_active_faults: 10000,
      },
    },
    {
      name: "envoy.filters.http.fault",
      typed_config: {
        "@type": type("envoy.extensions.filters.http.fault.v3.HTTPFault"),
        abort: { grpc_status: 14, percentage: { numerator: 0, denominator: "HUNDRED" } },
        delay: { fixed_delay: "0.1s", percentage: { numerator: 0, denominator: "HUNDRED" } },
        // Health checks pass untouched: chaos makes requests fail, and outlier
        // detection (not the health checker) has to notice.
        headers: [{ name: ":path", string_match: { prefix: "/grpc.health.v1.Health/" }, invert_match: true }],
        abort_percent_runtime: "chaos.abort_percent",
        abort_grpc_status_runtime: "chaos.abort_grpc_status",
        delay_percent_runtime: "chaos.delay_percent",
        delay_duration_runtime: "chaos.delay_ms",
        max_active_faults: 10000,
      },
    },
  ];
}

function grpcHealthCheck(): Obj[] {
  return [
    {
      timeout: "1s",
      interval: "1s",
      no_traffic_interval: "2s",
      unhealthy_threshold: 2,
      healthy_threshold: 1,
      grpc_health_check: {},
    },
  ];
}

/**
 * Outlier detection counts only failures that say the host itself is in trouble:
 * - 5 consecutive gateway failures: 502/503/504 from the host, which for gRPC means
 *   UNAVAILABLE or DEADLINE_EXCEEDED (Envoy maps grpc-status to an HTTP code here):
 *   what a sidecar answers when its app is dead, overloaded or stuck;
 * - 5 consecutive local-origin failures (split_external_local_origin_errors):
 *   connect failures, resets and timeouts this Envoy saw itself.
 * consecutive_5xx and success rate are off (Envoy enforces both by default): they
 * count INTERNAL and UNKNOWN (500), which any client can provoke with a bad frame,
 * so one client could eject every host of a service.
 */
function outlierDetection(spec: ServiceSpec, maxEjectionPercent: number): Obj {
  const { outlier } = spec.call;
  return {
    split_external_local_origin_errors: true,
    consecutive_gateway_failure: outlier.consecutiveGatewayFailure,
    enforcing_consecutive_gateway_failure: 100,
    consecutive_local_origin_failure: outlier.consecutiveGatewayFailure,
    enforcing_consecutive_local_origin_failure: 100,
    enforcing_consecutive_5xx: 0,
    enforcing_success_rate: 0,
    interval: ms(outlier.intervalMs),
    base_ejection_time: ms(outlier.baseEjectionMs),
    max_ejection_percent: maxEjectionPercent,
  };
}

/**
 * How much of a service outlier detection may eject. A service's own hosts: at most
 * half of them (topology's maxEjectionPercent), so a lone host is never ejected for
 * failing some calls. A version behind a failover aggregate (failoverCluster): all
 * of it, because its traffic moves to the other version.
 */
const standalone = (spec: ServiceSpec) => spec.call.outlier.maxEjectionPercent;
const failoverMember = 100;

/**
 * A cluster for an upstream service's sidecars: mTLS (`tls`, which the active
 * health checks use too), circuit breakers, ejection, health.
 */
function upstreamCluster(name: string, spec: ServiceSpec, endpoints: { address: string; port: number; type: string }[], tls: Obj, maxEjectionPercent = standalone(spec)): Obj {
  const { circuit } = spec.call;
  return {
    name,
    type: endpoints[0]!.type,
    transport_socket: tls,
    connect_timeout: "0.25s",
    lb_policy: "LEAST_REQUEST",
    typed_extension_protocol_options: http2Options(),
    load_assignment: {
      cluster_name: name,
      endpoints: [{ lb_endpoints: endpoints.map((e) => ({ endpoint: { address: socket(e.address, e.port) } })) }],
    },
    circuit_breakers: {
      thresholds: [
        {
          priority: "DEFAULT",
          max_connections: circuit.maxConnections,
          max_pending_requests: circuit.maxPendingRequests,
          max_requests: circuit.maxRequests,
          max_retries: circuit.maxRetries,
          retry_budget: { budget_percent: { value: 20 }, min_retry_concurrency: 3 },
          track_remaining: true,
        },
      ],
    },
    outlier_detection: outlierDetection(spec, maxEjectionPercent),
    // Envoy's default panic threshold, kept on purpose: when fewer than half the hosts
    // look usable (health checks timing out on a busy machine, ejections) Envoy sends
    // to all of them rather than answer "no healthy upstream" to every caller. A host
    // that is really down fails those calls fast (connection refused, or its
    // sidecar's 503), and the caller's retry or fallback takes over.
    common_lb_config: { healthy_panic_threshold: { value: 50 } },
    health_checks: grpcHealthCheck(),
  };
}

const failoverName = (spec: ServiceSpec, version: string) => `${spec.name}-${version}-first`;

/**
 * An aggregate cluster over every version of a service, `version` first: Envoy
 * sends to the first version that has a healthy, non-ejected host, and a retry goes
 * to the next version (failoverPolicy), so no version is a single point of failure.
 * Stats of calls routed here (response codes, grpc_stats, upstream_rq_time) are
 * this cluster's; health, ejections and connections stay the versions' own.
 */
function failoverCluster(spec: ServiceSpec, version: string): Obj {
  const order = [version, ...spec.versions.filter((v) => v !== version)];
  return {
    name: failoverName(spec, version),
    connect_timeout: "0.25s",
    lb_policy: "CLUSTER_PROVIDED",
    cluster_type: {
      name: "envoy.clusters.aggregate",
      typed_config: { "@type": type("envoy.extensions.clusters.aggregate.v3.ClusterConfig"), clusters: order.map((v) => `${spec.name}-${v}`) },
    },
    typed_extension_protocol_options: http2Options(),
    // Of an aggregate's circuit breakers Envoy applies only max_retries (the versions
    // keep their own). No retry budget: when a version dies, every call in flight on
    // it needs its one retry on the other version at once.
    circuit_breakers: { thresholds: [{ priority: "DEFAULT", max_retries: spec.call.circuit.maxRequests }] },
  };
}

function localAppCluster(name: string, port: number, http2: boolean, address = "127.0.0.1"): Obj {
  return {
    name,
    type: "STATIC",
    connect_timeout: "0.25s",
    ...(http2 ? { typed_extension_protocol_options: http2Options() } : {}),
    load_assignment: { cluster_name: name, endpoints: [{ lb_endpoints: [{ endpoint: { address: socket(address, port) } }] }] },
    circuit_breakers: { thresholds: [{ max_connections: 4096, max_pending_requests: 4096, max_requests: 8192, max_retries: 0 }] },
  };
}

/** Route settings for calling a service: timeouts, retries, hedging. */
function callPolicy(spec: ServiceSpec): Obj {
  const policy = spec.call;
  return {
    timeout: ms(policy.timeoutMs),
    // The caller's grpc-timeout becomes the route timeout (capped), so Envoy never
    // waits longer than the caller will.
    max_stream_duration: { grpc_timeout_header_max: ms(policy.maxGrpcTimeoutMs) },
    retry_policy: {
      retry_on: "unavailable,reset,connect-failure,refused-stream,cancelled",
      num_retries: policy.retries,
      ...(policy.perTryTimeoutMs ? { per_try_timeout: ms(policy.perTryTimeoutMs) } : {}),
      retry_back_off: { base_interval: "0.01s", max_interval: "0.05s" },
    },
    ...(policy.hedge ? { hedge_policy: { hedge_on_per_try_timeout: true } } : {}),
  };
}

function callRoute(cluster: string, spec: ServiceSpec): Obj {
  return { cluster, ...callPolicy(spec) };
}

/**
 * callPolicy, with each retry sent to a version not tried yet (previous_priorities:
 * the aggregate's priorities are its versions) and to a host not tried yet: a call
 * that meets a dead or failing version is answered by the other one. INTERNAL is
 * retried here too: across versions it is the other build's answer to a read, so a
 * canary failing with INTERNAL costs callers nothing while the controller rolls it back.
 */
function failoverRoute(spec: ServiceSpec, version: string): Obj {
  const policy = callPolicy(spec);
  const retry = policy.retry_policy as Obj;
  return {
    cluster: failoverName(spec, version),
    // The app sees the service's name, never the caller's authority (see the mirrored routes).
    host_rewrite_literal: spec.name,
    ...policy,
    retry_policy: {
      ...retry,
      retry_on: `${retry.retry_on as string},internal`,
      retry_priority: {
        name: "envoy.retry_priorities.previous_priorities",
        typed_config: { "@type": type("envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig"), update_frequency: 1 },
      },
      retry_host_predicate: [{ name: "envoy.retry_host_predicates.previous_hosts", typed_config: { "@type": type("envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate") } }],
      host_selection_retry_max_attempts: 3,
    },
  };
}

/** Process-wide limits: connections always; for the edge also heap pressure. */
function overloadManager(heap?: { maxHeapBytes: number }): Obj {
  const connections = {
    name: "envoy.resource_monitors.global_downstream_max_connections",
    typed_config: {
      "@type": type("envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"),
      max_active_downstream_connections: edgeProtection.globalMaxConnections,
    },
  };
  if (!heap) return { resource_monitors: [connections] };
  const heapMonitor = "envoy.resource_monitors.fixed_heap";
  const scaled = (from: number, to: number) => ({ name: heapMonitor, scaled: { scaling_threshold: from, saturation_threshold: to } });
  return {
    refresh_interval: "0.25s",
    resource_monitors: [
      connections,
      { name: heapMonitor, typed_config: { "@type": type("envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig"), max_heap_size_bytes: heap.maxHeapBytes } },
    ],
    actions: [
      // Under memory pressure idle clients go first: their timeouts shrink toward 1s.
      {
        name: "envoy.overload_actions.reduce_timeouts",
        triggers: [scaled(0.9, 0.98)],
        typed_config: {
          "@type": type("envoy.config.overload.v3.ScaleTimersOverloadActionConfig"),
          timer_scale_factors: [
            { timer: "HTTP_DOWNSTREAM_CONNECTION_IDLE", min_timeout: "1s" },
            { timer: "HTTP_DOWNSTREAM_STREAM_IDLE", min_timeout: "1s" },
          ],
        },
      },
      { name: "envoy.overload_actions.shrink_heap", triggers: [{ name: heapMonitor, threshold: { value: 0.95 } }] },
      // Answered 503 with flag OM, which the edge's local reply mappers turn into RESOURCE_EXHAUSTED.
      { name: "envoy.overload_actions.stop_accepting_requests", triggers: [{ name: heapMonitor, threshold: { value: 0.98 } }] },
    ],
  };
}

/** `cluster` names the Envoy in its spans (Zipkin's service name). */
function bootstrap(id: string, cluster: string, adminPort: number, listeners: Obj[], clusters: Obj[], runtime: Obj = {}, overload: Obj = overloadManager()): Obj {
  return {
    node: { id, cluster },
    overload_manager: overload,
    admin: { address: socket("127.0.0.1", adminPort) },
    layered_runtime: {
      layers: [
        { name: "static", static_layer: runtime },
        { name: "admin", admin_layer: {} },
      ],
    },
    static_resources: { listeners, clusters },
  };
}

export function renderSidecar(spec: ServiceSpec, version: string, target: Target): Obj {
  const place = placements[target];
  const { ports, pki } = place;
  const id = instanceId(spec, version);
  const ownCertificate = pki.identity(spec.name).sds;
  const grpcRoute = {
    match: { prefix: "/", headers: [{ name: "content-type", string_match: { prefix: "application/grpc" } }] },
    route: { cluster: "local_app_grpc", timeout: "0s", max_stream_duration: { grpc_timeout_header_max: "0s" } },
    ...spanName(`ingress ${spec.name}`),
  };
  const connectRoute = { match: { prefix: "/" }, route: { cluster: "local_app_connect", timeout: "10s" }, ...spanName(`ingress ${spec.name} (Connect)`) };
  const ingress = listener(
    "ingress",
    "INBOUND",
    place.publicBind,
    ports.ingress(spec.name, version),
    hcm(
      `ingress_${spec.name}`,
      { name: "local_app", virtual_hosts: [{ name: "local_app", domains: ["*"], routes: spec.connect ? [grpcRoute, connectRoute] : [grpcRoute] }] },
      // Who may call what, first: nothing refused costs a fault or a token.
      [sidecarRbacFilter(spec.name), ...faultInjection(), localRateLimit(`ingress_${spec.name}_ratelimit`, spec.ingressRps)],
      place.accessLog(`${id}-ingress`),
      { ...sidecarIngressManagerOptions, tracing: tracing(place) },
    ),
    // Only the edge and the services the topology lets call this one get past the handshake.
    downstreamTls(ownCertificate, pki.trust, sidecarPeers(spec.name)),
  );
  const egress = spec.upstreams.map((upstream) =>
    listener(
      `egress_${upstream}`,
      "OUTBOUND",
      "127.0.0.1",
      ports.egress(spec.name, version, upstream),
      hcm(
        `egress_${upstream}`,
        { name: upstream, virtual_hosts: [{ name: upstream, domains: ["*"], routes: [{ match: { prefix: "/" }, route: callRoute(upstream, service(upstream)), ...spanName(`egress ${upstream}`) }] }] },
        [],
        place.accessLog(`${id}-egress-${upstream}`),
        { tracing: tracing(place) },
      ),
    ),
  );
  const clusters = [
    localAppCluster("local_app_grpc", ports.app(spec.name, version), true),
    ...(spec.connect ? [localAppCluster("local_app_connect", ports.appConnect(spec.name, version), false)] : []),
    ...spec.upstreams.map((upstream) => {
      const up = service(upstream);
      return upstreamCluster(upstream, up, up.versions.map((v) => place.ingressOf(upstream, v)), upstreamTls(ownCertificate, pki.trust, upstream));
    }),
    zipkinCluster(place),
  ];
  return bootstrap(id, `${id}-sidecar`, ports.sidecarAdmin(spec.name, version), [ingress, ...egress], clusters);
}

const bufferFilter = "envoy.filters.http.buffer";
/** Per-route body limit: the edge buffers a request up to `bytes`, then answers 413. */
const bodyLimit = (bytes: number): Obj => ({
  [bufferFilter]: { "@type": type("envoy.extensions.filters.http.buffer.v3.BufferPerRoute"), buffer: { max_request_bytes: bytes } },
});
/** Streams are never buffered whole (a client stream or reflection would stall). */
const unbuffered: Obj = { [bufferFilter]: { "@type": type("envoy.extensions.filters.http.buffer.v3.BufferPerRoute"), disabled: true } };

/**
 * Routes for a service's methods with the same match extras and action: methods
 * with their own body limit or streaming first, then the rest by service prefix.
 */
function serviceRoutes(spec: ServiceSpec, extraMatch: Obj, route: Obj): Obj[] {
  const limits = spec.edgeLimits;
  return spec.grpcServices.flatMap((grpcService) => [
    ...Object.entries(limits.methodMaxRequestBytes ?? {}).map(([method, bytes]) => ({ match: { path: `/${grpcService}/${method}`, ...extraMatch }, route, ...spanName(`${grpcService}/${method}`), typed_per_filter_config: bodyLimit(bytes) })),
    ...(limits.streamingMethods ?? []).map((method) => ({ match: { path: `/${grpcService}/${method}`, ...extraMatch }, route, ...spanName(`${grpcService}/${method}`), typed_per_filter_config: unbuffered })),
    { match: { prefix: `/${grpcService}/`, ...extraMatch }, route, ...spanName(grpcService), typed_per_filter_config: bodyLimit(limits.maxRequestBytes) },
  ]);
}

const contentType = (prefix: string): Obj => ({ header_filter: { header: { name: "content-type", string_match: { prefix } } } });
const allOf = (...filters: Obj[]): Obj => ({ and_filter: { filters } });
const anyOf = (...filters: Obj[]): Obj => ({ or_filter: { filters } });

/**
 * The edge's own answers (rate limit 429, too large 413, overload) in each
 * protocol's terms. A gRPC-web request is not gRPC to the connection manager, so its
 * local replies are plain HTTP, which the gRPC-web filter would turn into
 * UNAVAILABLE (it maps 429 and 503 there). The gRPC-web filter has rewritten the
 * request's content-type to application/grpc by the time a filter behind it
 * replies, so one mapper answers gRPC and gRPC-web alike: HTTP 200 and a
 * trailers-only RESOURCE_EXHAUSTED. Connect unary calls keep the HTTP status and get
 * the JSON error body the Connect protocol defines.
 */
function localReplies(): Obj {
  // By status, not by response flag: the rate limiter sets its flag after it replies.
  const status = (code: number) => ({ status_code_filter: { comparison: { op: "EQ", value: { default_value: code, runtime_key: `edge.local_reply.resource_exhausted.${code}` } } } });
  const causes = [
    { filter: status(429), message: "rate limit exceeded" },
    { filter: status(413), message: "request too large" },
    { filter: { response_flag_filter: { flags: ["OM"] } }, message: "edge overloaded" },
  ];
  const limited = anyOf(...causes.map((c) => c.filter));
  const header = (key: string, value: string) => ({ header: { key, value }, append_action: "OVERWRITE_IF_EXISTS_OR_ADD" });
  return {
    mappers: [
      // An empty body, so the reply is headers only: a trailers-only gRPC answer.
      ...causes.map((cause) => ({
        filter: allOf(cause.filter, contentType("application/grpc")),
        status_code: 200,
        headers_to_add: [header("grpc-status", "8"), header("grpc-message", cause.message)],
        body: { inline_string: "" },
      })),
      {
        filter: allOf(limited, anyOf(contentType("application/json"), contentType("application/proto"))),
        body_format_override: {
          json_format: { code: "resource_exhausted", message: "%LOCAL_REPLY_BODY%" },
          content_type: "application/json",
        },
      },
    ],
  };
}

export function renderEdge(target: Target): Obj {
  const place = placements[target];
  const prediction = service("prediction");
  const [stable, canary] = prediction.versions as [string, string];
  const forced = prediction.versions.flatMap((v) => serviceRoutes(prediction, { headers: [{ name: "x-canary", string_match: { exact: v } }] }, failoverRoute(prediction, v)));
  // The canary's share: routing.prediction.prediction-v2 percent of calls go to
  // v2 first, the rest to v1 first (runtime, so the canary controller moves it
  // through the admin API without a restart). A route-level fraction and not
  // weighted_clusters, whose runtime keys are named after the clusters: these are
  // the failover aggregates, while the keys keep the versions' names.
  const toCanary = serviceRoutes(
    prediction,
    { runtime_fraction: { default_value: { numerator: 0, denominator: "HUNDRED" }, runtime_key: `routing.prediction.prediction-${canary}` } },
    failoverRoute(prediction, canary),
  );
  // Shadow traffic: routing.prediction.shadow_percent of the stable version's calls are
  // also mirrored to the canary (whose answer Envoy drops). The pair is marked by its
  // authority, which the edge sets on every prediction route so a caller cannot forge
  // it: the primary sees MIRRORED_AUTHORITY, the mirror the same plus Envoy's "-shadow",
  // and the two meet in Redis to be compared (services/prediction/shadow.ts).
  const mirrored = serviceRoutes(
    prediction,
    { runtime_fraction: { default_value: { numerator: 0, denominator: "HUNDRED" }, runtime_key: "routing.prediction.shadow_percent" } },
    { ...failoverRoute(prediction, stable), host_rewrite_literal: MIRRORED_AUTHORITY, request_mirror_policies: [{ cluster: `prediction-${canary}` }] },
  );
  const toStable = serviceRoutes(prediction, {}, failoverRoute(prediction, stable));
  const otherRoutes = services.filter((s) => s.name !== "prediction").flatMap((s) => serviceRoutes(s, {}, callRoute(s.name, s)));
  // Health and reflection at the edge describe the product: prediction, answered by
  // whichever version is up.
  const infraRoutes = ["/grpc.health.v1.Health/", "/grpc.reflection."].map((prefix) => ({
    match: { prefix },
    route: { ...failoverRoute(prediction, stable), timeout: "5s" },
    ...spanName(prefix.replaceAll("/", "")),
    typed_per_filter_config: unbuffered,
  }));
  const limits = edgeProtection;
  const manager = hcm(
    "edge",
    {
      name: "edge",
      // Fault-injection headers are for tests inside the mesh, never from outside.
      request_headers_to_remove: ["x-envoy-fault-abort-grpc-request", "x-envoy-fault-abort-request", "x-envoy-fault-delay-request", "x-envoy-fault-abort-request-percentage", "x-envoy-fault-abort-grpc-request-percentage", "x-envoy-fault-delay-request-percentage"],
      virtual_hosts: [
        {
          name: "recsys",
          domains: ["*"],
          typed_per_filter_config: corsPolicy(),
          routes: [...forced, ...toCanary, ...mirrored, ...toStable, ...otherRoutes, ...infraRoutes],
        },
      ],
    },
    [
      { name: "envoy.filters.http.cors", typed_config: { "@type": type("envoy.extensions.filters.http.cors.v3.Cors") } },
      { name: "envoy.filters.http.grpc_web", typed_config: { "@type": type("envoy.extensions.filters.http.grpc_web.v3.GrpcWeb") } },
      // Per-method gRPC success/failure counters per cluster: what the canary
      // controller compares between versions.
      {
        name: "envoy.filters.http.grpc_stats",
        typed_config: { "@type": type("envoy.extensions.filters.http.grpc_stats.v3.FilterConfig"), stats_for_all_methods: true, enable_upstream_stats: true },
      },
      // Identity from the verified token only, then who may call what (envoy/access.ts).
      ...edgeAuthFilters(place.pki.jwks),
      // Per tier and user (or per address when anonymous), shared by every edge.
      globalRateLimitFilter(),
      // The backstop for one edge process, should the global limit fail open.
      localRateLimit("edge_backstop_ratelimit", edgeBackstopRps),
      // After the rate limit (never buffer what is refused); limits come per route.
      { name: bufferFilter, typed_config: { "@type": type("envoy.extensions.filters.http.buffer.v3.Buffer"), max_request_bytes: Math.max(...services.map((s) => s.edgeLimits.maxRequestBytes)) } },
    ],
    place.accessLog("edge"),
    { ...edgeManagerOptions, tracing: tracing(place) },
  );
  const edgeManager = {
    ...manager,
    typed_config: {
      ...(manager.typed_config as Obj),
      // A slow or idle client cannot hold the edge: see edgeProtection in topology.
      http2_protocol_options: { max_concurrent_streams: limits.maxConcurrentStreams, initial_stream_window_size: 65536, initial_connection_window_size: 1048576 },
      common_http_protocol_options: { idle_timeout: ms(limits.idleTimeoutMs), max_headers_count: limits.maxHeadersCount, headers_with_underscores_action: "REJECT_REQUEST" },
      max_request_headers_kb: limits.maxRequestHeadersKb,
      request_headers_timeout: ms(limits.requestHeadersTimeoutMs),
      stream_idle_timeout: ms(limits.streamIdleTimeoutMs),
      local_reply_config: localReplies(),
    },
  };
  const connectionLimit = {
    name: "envoy.filters.network.connection_limit",
    typed_config: { "@type": type("envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit"), stat_prefix: "edge_connections", max_connections: limits.maxConnections },
  };
  const edgeListener = {
    name: "edge",
    address: socket(place.publicBind, place.ports.edge),
    traffic_direction: "INBOUND",
    per_connection_buffer_limit_bytes: 32768,
    filter_chains: [{ filters: [connectionLimit, edgeManager] }],
  };
  const tlsTo = (peer: string) => upstreamTls(place.pki.identity(edgeIdentity).sds, place.pki.trust, peer);
  const clusters = [
    ...services.flatMap((s) =>
      s.name === "prediction"
        ? [...s.versions.map((v) => upstreamCluster(`prediction-${v}`, s, [place.ingressOf(s.name, v)], tlsTo(s.name), failoverMember)), ...s.versions.map((v) => failoverCluster(s, v))]
        : [upstreamCluster(s.name, s, s.versions.map((v) => place.ingressOf(s.name, v)), tlsTo(s.name))],
    ),
    rateLimitCluster(place.rateLimit.address, place.rateLimit.port, place.rateLimit.type),
    zipkinCluster(place),
  ];
  return bootstrap(
    "edge",
    "edge",
    place.ports.edgeAdmin,
    [edgeListener],
    clusters,
    { routing: { prediction: { [`prediction-${canary}`]: 0, shadow_percent: 0 } } },
    overloadManager({ maxHeapBytes: limits.maxHeapBytes }),
  );
}

/** Every rendered config: path under envoy/ -> YAML text. */
export function renderAll(): Map<string, string> {
  const out = new Map<string, string>();
  const header = "# Rendered from envoy/topology.ts by envoy/render.ts. Do not edit.\n";
  for (const target of ["local", "k8s"] as const) {
    out.set(`${target}/edge.yaml`, header + stringify(renderEdge(target)));
    for (const { service: spec, version, id } of instances) {
      out.set(`${target}/sidecar-${id}.yaml`, header + stringify(renderSidecar(spec, version, target)));
    }
  }
  return out;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const check = process.argv.includes("--check");
  let stale = 0;
  for (const [path, text] of renderAll()) {
    const file = join(ROOT, "envoy", path);
    if (check) {
      if (!existsSync(file) || readFileSync(file, "utf8") !== text) {
        console.error(`envoy/${path} is stale: run npm run render`);
        stale++;
      }
    } else {
      mkdirSync(join(file, ".."), { recursive: true });
      writeFileSync(file, text);
    }
  }
  process.exit(stale ? 1 : 0);
}
