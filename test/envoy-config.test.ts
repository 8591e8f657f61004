import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import { methodPath, accessTable } from "../envoy/access.js";
import { defaultAllowedOrigins, edgeIdentity, rateLimitClusterName, sidecarPeers, spiffeId } from "../envoy/security.js";
import { edgeProtection, instances, localPorts, podPorts, services } from "../envoy/topology.js";
import { renderAll } from "../envoy/render.js";
import { ensurePki } from "../scripts/lib/pki.js";
import { runCommand } from "../scripts/lib/processes.js";
import { ROOT, tool } from "../scripts/lib/tools.js";
import { writeWithPki } from "./support/rendered-pki.js";

type Obj = Record<string, any>;
const rendered = renderAll();
const config = (path: string): Obj => parse(rendered.get(path)!);
const clustersOf = (path: string): Obj[] => config(path).static_resources.clusters;
const listenersOf = (path: string): Obj[] => config(path).static_resources.listeners;
const managerOf = (listener: Obj): Obj => listener.filter_chains[0].filters.find((f: Obj) => f.name === "envoy.filters.network.http_connection_manager").typed_config;
const tlsOf = (socket: Obj | undefined): Obj => socket?.typed_config.common_tls_context;
const peersOf = (tls: Obj): string[] => tls.combined_validation_context.default_validation_context.match_typed_subject_alt_names.map((m: Obj) => m.matcher.exact);
const certificateOf = (tls: Obj): string => tls.tls_certificate_sds_secret_configs[0].name;
const targets = ["local", "k8s"] as const;
const sidecarPath = (target: string, id: string) => `${target}/sidecar-${id}.yaml`;

// Envoy, even validating, opens the certificate, CA and JWKS files a config names.
const work = mkdtempSync(join(tmpdir(), "recsys-envoy-config-"));
const pkiDir = join(work, "pki");
beforeAll(async () => {
  await ensurePki({ dir: pkiDir });
  // Local configs write access logs under .run/logs (relative, from the checkout), as npm start runs them.
  mkdirSync(join(ROOT, ".run", "logs"), { recursive: true });
}, 60_000);
afterAll(() => rmSync(work, { recursive: true, force: true }));

describe("Envoy configs rendered from envoy/topology.ts", () => {
  it("are committed up to date (npm run render)", () => {
    for (const [path, text] of rendered) {
      expect(readFileSync(join(ROOT, "envoy", path), "utf8"), `envoy/${path}`).toBe(text);
    }
  });

  it.each([...rendered.keys()])("envoy --mode validate accepts %s", async (path) => {
    const file = writeWithPki(work, path, rendered.get(path)!, pkiDir);
    const { code, stdout, stderr } = await runCommand(tool("envoy"), ["--mode", "validate", "--disable-hot-restart", "-l", "error", "-c", file], 60_000);
    expect(stdout + stderr).toContain("OK");
    expect(code).toBe(0);
  });

  it.each([...rendered.keys()])("%s ejects only for gateway and connection failures, never for a 500", (path) => {
    for (const cluster of clustersOf(path).filter((c) => c.outlier_detection)) {
      const od = cluster.outlier_detection;
      expect(od.enforcing_consecutive_5xx, cluster.name).toBe(0);
      expect(od.enforcing_success_rate, cluster.name).toBe(0);
      expect(od.enforcing_consecutive_gateway_failure, cluster.name).toBe(100);
      expect(od.split_external_local_origin_errors, cluster.name).toBe(true);
      // A lone host is never ejected, unless another version takes its traffic (failover member).
      const member = /^prediction-v\d$/.test(cluster.name) && path.endsWith("edge.yaml");
      if (!member) expect(od.max_ejection_percent, cluster.name).toBeLessThanOrEqual(50);
      // Nor does a cluster stop sending because every host looks unusable.
      expect(cluster.common_lb_config.healthy_panic_threshold.value, cluster.name).toBeGreaterThan(0);
    }
  });

  it("sends each prediction version's traffic to the other version when it has no healthy host, and retries there", () => {
    const edge = config("local/edge.yaml");
    const aggregates = Object.fromEntries(clustersOf("local/edge.yaml").filter((c) => c.cluster_type?.name === "envoy.clusters.aggregate").map((c) => [c.name, c.cluster_type.typed_config.clusters]));
    expect(aggregates).toEqual({ "prediction-v1-first": ["prediction-v1", "prediction-v2"], "prediction-v2-first": ["prediction-v2", "prediction-v1"] });
    const routes: Obj[] = managerOf(edge.static_resources.listeners[0]).route_config.virtual_hosts[0].routes;
    const predictionRoutes = routes.filter((r) => (r.match.prefix ?? r.match.path).startsWith("/recsys.prediction.") || /grpc\.(health|reflection)/.test(r.match.prefix ?? ""));
    for (const route of predictionRoutes) {
      expect(Object.keys(aggregates)).toContain(route.route.cluster);
      expect(route.route.retry_policy.retry_priority.name).toBe("envoy.retry_priorities.previous_priorities");
    }
    // The canary controller's runtime key still sets v2's share.
    expect(predictionRoutes.some((r) => r.match.runtime_fraction?.runtime_key === "routing.prediction.prediction-v2")).toBe(true);
  });

  it("bounds what one client can hold at the edge", () => {
    const listener = config("local/edge.yaml").static_resources.listeners[0];
    const hcm = listener.filter_chains[0].filters.find((f: Obj) => f.name === "envoy.filters.network.http_connection_manager").typed_config;
    expect(hcm.request_headers_timeout).toBe(`${edgeProtection.requestHeadersTimeoutMs / 1000}s`);
    expect(hcm.common_http_protocol_options.idle_timeout).toBe(`${edgeProtection.idleTimeoutMs / 1000}s`);
    expect(hcm.stream_idle_timeout).toBe(`${edgeProtection.streamIdleTimeoutMs / 1000}s`);
    expect(hcm.http2_protocol_options.max_concurrent_streams).toBe(edgeProtection.maxConcurrentStreams);
    expect(listener.filter_chains[0].filters[0].typed_config.max_connections).toBe(edgeProtection.maxConnections);
  });
});

describe("security wiring (issue 15)", () => {
  it.each(targets)("%s: every sidecar ingress requires a client certificate from the callers the topology names, and checks RBAC before anything else", (target) => {
    for (const { service: spec, id } of instances) {
      const ingress = listenersOf(sidecarPath(target, id)).find((l) => l.name === "ingress")!;
      const socket = ingress.filter_chains[0].transport_socket;
      expect(socket.typed_config.require_client_certificate, id).toBe(true);
      expect(certificateOf(tlsOf(socket)), id).toBe(spec.name);
      expect(peersOf(tlsOf(socket)).sort(), id).toEqual(sidecarPeers(spec.name).map(spiffeId).sort());
      const manager = managerOf(ingress);
      expect(manager.http_filters[0].name, id).toBe("envoy.filters.http.rbac");
      expect(manager.forward_client_cert_details, id).toBe("SANITIZE_SET");
      // Each method the access table lists for the service has a policy; nothing else does.
      const policies = Object.keys(manager.http_filters[0].typed_config.rules.policies).filter((p) => p.startsWith("/"));
      expect(policies.sort(), id).toEqual(accessTable.filter((e) => e.service === spec.name).map(methodPath).sort());
    }
  });

  it.each(targets)("%s: every call between Envoys is mTLS with the caller's own certificate, accepting only the callee's", (target) => {
    for (const { service: spec, id } of instances) {
      for (const upstream of spec.upstreams) {
        const tls = tlsOf(clustersOf(sidecarPath(target, id)).find((c) => c.name === upstream)!.transport_socket);
        expect(certificateOf(tls), `${id} -> ${upstream}`).toBe(spec.name);
        expect(peersOf(tls), `${id} -> ${upstream}`).toEqual([spiffeId(upstream)]);
      }
      // The app behind it is on loopback, in the same pod: plaintext.
      for (const local of clustersOf(sidecarPath(target, id)).filter((c) => c.name.startsWith("local_app"))) expect(local.transport_socket, id).toBeUndefined();
    }
    const edgeClusters = clustersOf(`${target}/edge.yaml`);
    for (const s of services) {
      const members = s.name === "prediction" ? s.versions.map((v) => `prediction-${v}`) : [s.name];
      for (const name of members) {
        const tls = tlsOf(edgeClusters.find((c) => c.name === name)!.transport_socket);
        expect(certificateOf(tls), name).toBe(edgeIdentity);
        expect(peersOf(tls), name).toEqual([spiffeId(s.name)]);
        // Active health checks use the cluster's transport socket: the same mTLS.
        expect(edgeClusters.find((c) => c.name === name)!.health_checks[0].transport_socket_match_criteria, name).toBeUndefined();
      }
    }
  });

  it.each(targets)("%s: the edge verifies identity before RBAC, then rate-limits globally with a local backstop, and buffers last", (target) => {
    const manager = managerOf(listenersOf(`${target}/edge.yaml`)[0]!);
    expect(manager.http_filters.map((f: Obj) => f.name)).toEqual([
      "envoy.filters.http.cors",
      "envoy.filters.http.grpc_web",
      "envoy.filters.http.grpc_stats",
      "envoy.filters.http.header_mutation",
      "envoy.filters.http.jwt_authn",
      "envoy.filters.http.rbac",
      "envoy.filters.http.ratelimit",
      "envoy.filters.http.local_ratelimit",
      "envoy.filters.http.buffer",
      "envoy.filters.http.router",
    ]);
    // The client's address is the TCP peer's; paths are normalised before RBAC reads them.
    expect(manager).toMatchObject({ use_remote_address: true, normalize_path: true, merge_slashes: true });
    // No tier from a header the client writes: it is stripped, and nothing reads it.
    expect(rendered.get(`${target}/edge.yaml`)).not.toMatch(/header_name: x-user-tier/);
    expect(manager.http_filters.find((f: Obj) => f.name === "envoy.filters.http.local_ratelimit").typed_config.descriptors).toBeUndefined();
    const rateLimit = clustersOf(`${target}/edge.yaml`).find((c) => c.name === rateLimitClusterName)!;
    const address = rateLimit.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address;
    expect(address.port_value).toBe(target === "local" ? localPorts.rateLimitGrpc : podPorts.rateLimitGrpc);
    expect(rateLimit.type).toBe(target === "local" ? "STATIC" : "STRICT_DNS");
  });

  it.each(targets)("%s: CORS grants only the web console's origins, without credentials, and exposes what the console reads", (target) => {
    const cors = managerOf(listenersOf(`${target}/edge.yaml`)[0]!).route_config.virtual_hosts[0].typed_per_filter_config["envoy.filters.http.cors"];
    expect(cors.allow_origin_string_match).toEqual(defaultAllowedOrigins.map((exact) => ({ exact })));
    expect(defaultAllowedOrigins).toEqual([`http://127.0.0.1:${localPorts.webConsole}`, `http://localhost:${localPorts.webConsole}`]);
    expect(cors.allow_credentials).toBe(false);
    const list = (text: string) => text.split(",").map((h) => h.trim());
    expect(list(cors.allow_headers)).toEqual(expect.arrayContaining(["content-type", "connect-protocol-version", "connect-timeout-ms", "x-grpc-web", "x-user-agent", "x-canary", "authorization", "traceparent"]));
    expect(list(cors.expose_headers)).toEqual(expect.arrayContaining(["x-service-version", "grpc-status", "grpc-message", "traceresponse"]));
  });

  it("local configs name no absolute path (certificates and logs sit under the repository's .run/)", () => {
    for (const [path, text] of rendered) {
      if (!path.startsWith("local/")) continue;
      expect(text, path).not.toContain(ROOT);
      const files = [...text.matchAll(/^\s+(?:- )?(?:path|filename): (\S*(?:pki|\.log)\S*)$/gm)].map((m) => m[1]!);
      expect(files.length, path).toBeGreaterThan(2);
      for (const file of files) expect(file, path).toMatch(/^\.run\//);
    }
  });
});

describe("one gRPC endpoint for the whole public API (issue 17)", () => {
  it.each(targets)("%s: the edge routes every service's methods, and every sidecar sends Connect (non-gRPC) requests to its app's Connect listener", (target) => {
    const routes: Obj[] = managerOf(listenersOf(`${target}/edge.yaml`)[0]!).route_config.virtual_hosts[0].routes;
    for (const s of services) {
      for (const grpcService of s.grpcServices) expect(routes.some((r) => r.match.prefix === `/${grpcService}/`), grpcService).toBe(true);
    }
    // Reflection for all of them comes from prediction (which serves every service's descriptors).
    expect(routes.find((r) => r.match.prefix === "/grpc.reflection.")?.route.cluster).toMatch(/^prediction-v\d-first$/);
    for (const { service: spec, version, id } of instances) {
      expect(spec.connect, spec.name).toBe(true);
      const sidecarRoutes: Obj[] = managerOf(listenersOf(sidecarPath(target, id)).find((l) => l.name === "ingress")!).route_config.virtual_hosts[0].routes;
      expect(sidecarRoutes.map((r) => r.route.cluster), id).toEqual(["local_app_grpc", "local_app_connect"]);
      expect(sidecarRoutes[0]!.match.headers[0].string_match.prefix).toBe("application/grpc");
      const connect = clustersOf(sidecarPath(target, id)).find((c) => c.name === "local_app_connect")!;
      const ports = target === "local" ? localPorts : podPorts;
      expect(connect.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value, id).toBe(ports.appConnect(spec.name, version));
    }
  });
});

describe("tracing (issue 19)", () => {
  it.each(targets)("%s: every connection manager (edge, sidecar ingress and egress) traces to Zipkin with W3C trace context and 128-bit ids", (target) => {
    const paths = [`${target}/edge.yaml`, ...instances.map((i) => sidecarPath(target, i.id))];
    for (const path of paths) {
      const managers = listenersOf(path).map((l) => [l.name as string, managerOf(l)] as const);
      expect(managers.length, path).toBeGreaterThan(0);
      for (const [name, manager] of managers) {
        const { provider, random_sampling } = manager.tracing;
        expect(provider.name, `${path} ${name}`).toBe("envoy.tracers.zipkin");
        expect(provider.typed_config).toMatchObject({ collector_cluster: "zipkin", collector_endpoint: "/api/v2/spans", trace_id_128bit: true, trace_context_option: "USE_B3_WITH_W3C_PROPAGATION", shared_span_context: false });
        // Locally no request is traced until `npm run observe` raises the runtime value; Kubernetes samples a ratio.
        expect(random_sampling.value, `${path} ${name}`).toBe(target === "local" ? 0 : 1);
      }
      // Ingress listeners make server spans, egress listeners client spans.
      for (const l of listenersOf(path)) expect(l.traffic_direction, `${path} ${l.name}`).toBe(l.name.startsWith("egress_") ? "OUTBOUND" : "INBOUND");
      // A static collector cluster: an Envoy starts whether Zipkin runs or not.
      const zipkin = clustersOf(path).find((c) => c.name === "zipkin")!;
      expect(zipkin.type, path).toBe(target === "local" ? "STATIC" : "STRICT_DNS");
    }
  });
});
