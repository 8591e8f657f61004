// Renders every Envoy config from envoy/topology.ts: one sidecar per service
// instance and the edge, for local runs (envoy/local/) and Kubernetes (envoy/k8s/).
//   npx tsx scripts/render-envoy.ts          write the files
//   npx tsx scripts/render-envoy.ts --check  exit 1 when a committed file is stale
import { mkdirSync, readFileSync, existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { stringify } from "yaml";
import { instances, localPorts, podPorts, service, services, tiers, anonymousRps, type Ports, type ServiceSpec } from "../envoy/topology.js";
import { ROOT } from "./tools.js";

type Target = "local" | "k8s";
type Obj = Record<string, unknown>;

interface Placement {
  ports: Ports;
  /** Address a listener that other hosts reach binds to. */
  publicBind: string;
  /** Address and discovery type of an instance's sidecar ingress. */
  ingressOf(service: string, version: string): { address: string; port: number; type: "STATIC" | "STRICT_DNS" };
  accessLog(id: string): string;
}

const placements: Record<Target, Placement> = {
  local: {
    ports: localPorts,
    publicBind: "127.0.0.1",
    ingressOf: (s, v) => ({ address: "127.0.0.1", port: localPorts.ingress(s, v), type: "STATIC" }),
    accessLog: (id) => `.run/logs/envoy-${id}.access.log`,
  },
  k8s: {
    ports: podPorts,
    publicBind: "0.0.0.0",
    // One headless Service per version, so Envoy balances and ejects per pod.
    ingressOf: (s, v) => ({
      address: `${service(s).versions.length > 1 ? `${s}-${v}` : s}.recsys.svc.cluster.local`,
      port: podPorts.ingress(s, v),
      type: "STRICT_DNS",
    }),
    accessLog: () => "stdout",
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

/** JSON access log lines to a file (local) or to stdout (Kubernetes: path "stdout"). */
function accessLog(path: string): Obj[] {
  const sink =
    path === "stdout"
      ? { name: "envoy.access_loggers.stdout", "@type": type("envoy.extensions.access_loggers.stream.v3.StdoutAccessLog") }
      : { name: "envoy.access_loggers.file", "@type": type("envoy.extensions.access_loggers.file.v3.FileAccessLog"), path };
  const { name, ...config } = sink;
  return [
    {
      name,
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
          },
        },
      },
    },
  ];
}

function hcm(statPrefix: string, routeConfig: Obj, httpFilters: Obj[], logPath: string): Obj {
  return {
    name: "envoy.filters.network.http_connection_manager",
    typed_config: {
      "@type": type("envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"),
      stat_prefix: statPrefix,
      codec_type: "AUTO",
      http2_protocol_options: { max_concurrent_streams: 1000 },
      access_log: accessLog(logPath),
      route_config: routeConfig,
      http_filters: [...httpFilters, { name: "envoy.filters.http.router", typed_config: { "@type": type("envoy.extensions.filters.http.router.v3.Router") } }],
    },
  };
}

function listener(name: string, address: string, port: number, manager: Obj): Obj {
  return { name, address: socket(address, port), filter_chains: [{ filters: [manager] }] };
}

function tokenBucket(rps: number, burst = rps): Obj {
  return { max_tokens: burst, tokens_per_fill: rps, fill_interval: "1s" };
}

const always = { default_value: { numerator: 100, denominator: "HUNDRED" } };

function localRateLimit(statPrefix: string, rps: number, perTier?: { descriptors: Obj[]; rateLimits: Obj[] }): Obj {
  return {
    name: "envoy.filters.http.local_ratelimit",
    typed_config: {
      "@type": type("envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"),
      stat_prefix: statPrefix,
      token_bucket: tokenBucket(rps),
      filter_enabled: { ...always, runtime_key: `${statPrefix}.enabled` },
      filter_enforced: { ...always, runtime_key: `${statPrefix}.enforced` },
      // gRPC callers see RESOURCE_EXHAUSTED, not UNAVAILABLE (which they would retry).
      rate_limited_as_resource_exhausted: true,
      ...(perTier ? { descriptors: perTier.descriptors, rate_limits: perTier.rateLimits } : {}),
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

/** A cluster for an upstream service's sidecars: circuit breakers, ejection, health. */
function upstreamCluster(name: string, spec: ServiceSpec, endpoints: { address: string; port: number; type: string }[]): Obj {
  const { circuit, outlier } = spec.call;
  return {
    name,
    type: endpoints[0]!.type,
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
    outlier_detection: {
      consecutive_gateway_failure: outlier.consecutiveGatewayFailure,
      enforcing_consecutive_gateway_failure: 100,
      consecutive_5xx: outlier.consecutiveGatewayFailure,
      interval: ms(outlier.intervalMs),
      base_ejection_time: ms(outlier.baseEjectionMs),
      max_ejection_percent: 100,
      split_external_local_origin_errors: true,
      consecutive_local_origin_failure: outlier.consecutiveGatewayFailure,
    },
    // Fail fast when every endpoint is ejected or unhealthy, so the caller's
    // fallback runs at once instead of Envoy sending to a host it knows is bad.
    common_lb_config: { healthy_panic_threshold: { value: 0 } },
    health_checks: grpcHealthCheck(),
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
      per_try_timeout: ms(policy.perTryTimeoutMs),
      retry_back_off: { base_interval: "0.01s", max_interval: "0.05s" },
    },
    ...(policy.hedge ? { hedge_policy: { hedge_on_per_try_timeout: true } } : {}),
  };
}

function callRoute(cluster: string, spec: ServiceSpec): Obj {
  return { cluster, ...callPolicy(spec) };
}

function bootstrap(id: string, adminPort: number, listeners: Obj[], clusters: Obj[], runtime: Obj = {}): Obj {
  return {
    node: { id, cluster: id },
    overload_manager: {
      resource_monitors: [
        {
          name: "envoy.resource_monitors.global_downstream_max_connections",
          typed_config: {
            "@type": type("envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"),
            max_active_downstream_connections: 20000,
          },
        },
      ],
    },
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
  const { ports } = place;
  const id = spec.versions.length > 1 ? `${spec.name}-${version}` : spec.name;
  const grpcRoute = {
    match: { prefix: "/", headers: [{ name: "content-type", string_match: { prefix: "application/grpc" } }] },
    route: { cluster: "local_app_grpc", timeout: "0s", max_stream_duration: { grpc_timeout_header_max: "0s" } },
  };
  const connectRoute = { match: { prefix: "/" }, route: { cluster: "local_app_connect", timeout: "10s" } };
  const ingress = listener(
    "ingress",
    place.publicBind,
    ports.ingress(spec.name, version),
    hcm(
      `ingress_${spec.name}`,
      { name: "local_app", virtual_hosts: [{ name: "local_app", domains: ["*"], routes: spec.connect ? [grpcRoute, connectRoute] : [grpcRoute] }] },
      [...faultInjection(), localRateLimit(`ingress_${spec.name}_ratelimit`, spec.ingressRps)],
      place.accessLog(`${id}-ingress`),
    ),
  );
  const egress = spec.upstreams.map((upstream) =>
    listener(
      `egress_${upstream}`,
      "127.0.0.1",
      ports.egress(spec.name, version, upstream),
      hcm(
        `egress_${upstream}`,
        { name: upstream, virtual_hosts: [{ name: upstream, domains: ["*"], routes: [{ match: { prefix: "/" }, route: callRoute(upstream, service(upstream)) }] }] },
        [],
        place.accessLog(`${id}-egress-${upstream}`),
      ),
    ),
  );
  const clusters = [
    localAppCluster("local_app_grpc", ports.app(spec.name, version), true),
    ...(spec.connect ? [localAppCluster("local_app_connect", ports.appConnect(spec.name, version), false)] : []),
    ...spec.upstreams.map((upstream) => {
      const up = service(upstream);
      return upstreamCluster(upstream, up, up.versions.map((v) => place.ingressOf(upstream, v)));
    }),
  ];
  return bootstrap(id, ports.sidecarAdmin(spec.name, version), [ingress, ...egress], clusters);
}

export function renderEdge(target: Target): Obj {
  const place = placements[target];
  const prediction = service("prediction");
  const predictionPrefix = `/${prediction.grpcServices[0]}/`;
  const canaryRoutes = prediction.versions.map((v) => ({
    match: { prefix: predictionPrefix, headers: [{ name: "x-canary", string_match: { exact: v } }] },
    route: callRoute(`prediction-${v}`, prediction),
  }));
  const [stable, canary] = prediction.versions as [string, string];
  const splitRoute = {
    match: { prefix: predictionPrefix },
    route: {
      ...callPolicy(prediction),
      // Weights live in runtime (routing.prediction.prediction-v1 / -v2): the canary
      // controller changes them through the admin API without a restart.
      weighted_clusters: {
        runtime_key_prefix: "routing.prediction",
        clusters: [
          { name: `prediction-${stable}`, weight: 100 },
          { name: `prediction-${canary}`, weight: 0 },
        ],
      },
      request_mirror_policies: [
        { cluster: `prediction-${canary}`, runtime_fraction: { default_value: { numerator: 0, denominator: "HUNDRED" }, runtime_key: "routing.prediction.shadow_percent" } },
      ],
    },
  };
  const otherRoutes = services
    .filter((s) => s.name !== "prediction")
    .flatMap((s) => s.grpcServices.map((g) => ({ match: { prefix: `/${g}/` }, route: callRoute(s.name, s) })));
  // Health and reflection at the edge describe the product: prediction (stable).
  const infraRoutes = ["/grpc.health.v1.Health/", "/grpc.reflection."].map((prefix) => ({
    match: { prefix },
    route: { cluster: `prediction-${stable}`, timeout: "5s" },
  }));
  const cors = {
    "envoy.filters.http.cors": {
      "@type": type("envoy.extensions.filters.http.cors.v3.CorsPolicy"),
      allow_origin_string_match: [{ safe_regex: { regex: ".*" } }],
      allow_methods: "GET, POST, OPTIONS",
      allow_headers:
        "content-type, connect-protocol-version, connect-timeout-ms, grpc-timeout, x-grpc-web, x-user-agent, authorization, x-user-tier, x-canary, traceparent, tracestate",
      expose_headers: "grpc-status, grpc-message, grpc-status-details-bin, traceresponse",
      max_age: "86400",
    },
  };
  const edgeListener = listener(
    "edge",
    place.publicBind,
    place.ports.edge,
    hcm(
      "edge",
      {
        name: "edge",
        // Fault-injection headers are for tests inside the mesh, never from outside.
        request_headers_to_remove: ["x-envoy-fault-abort-grpc-request", "x-envoy-fault-abort-request", "x-envoy-fault-delay-request", "x-envoy-fault-abort-request-percentage", "x-envoy-fault-abort-grpc-request-percentage", "x-envoy-fault-delay-request-percentage"],
        virtual_hosts: [
          {
            name: "recsys",
            domains: ["*"],
            typed_per_filter_config: cors,
            routes: [...canaryRoutes, splitRoute, ...otherRoutes, ...infraRoutes],
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
        localRateLimit("edge_tier_ratelimit", anonymousRps, {
          descriptors: tiers.map((t) => ({ entries: [{ key: "tier", value: t.tier }], token_bucket: tokenBucket(t.rps, t.burst) })),
          rateLimits: [{ actions: [{ request_headers: { header_name: "x-user-tier", descriptor_key: "tier" } }] }],
        }),
      ],
      place.accessLog("edge"),
    ),
  );
  const clusters = services.flatMap((s) =>
    s.name === "prediction"
      ? s.versions.map((v) => upstreamCluster(`prediction-${v}`, s, [place.ingressOf(s.name, v)]))
      : [upstreamCluster(s.name, s, s.versions.map((v) => place.ingressOf(s.name, v)))],
  );
  return bootstrap("edge", place.ports.edgeAdmin, [edgeListener], clusters, {
    routing: { prediction: { [`prediction-${stable}`]: 100, [`prediction-${canary}`]: 0, shadow_percent: 0 } },
  });
}

/** Every rendered config: path under envoy/ -> YAML text. */
export function renderAll(): Map<string, string> {
  const out = new Map<string, string>();
  const header = "# Rendered from envoy/topology.ts by scripts/render-envoy.ts. Do not edit.\n";
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
