import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";
import { edgeProtection } from "../envoy/topology.js";
import { renderAll } from "../scripts/render-envoy.js";
import { runCommand } from "../scripts/processes.js";
import { ROOT, tool } from "../scripts/tools.js";

type Obj = Record<string, any>;
const rendered = renderAll();
const config = (path: string): Obj => parse(rendered.get(path)!);
const clustersOf = (path: string): Obj[] => config(path).static_resources.clusters;

describe("Envoy configs rendered from envoy/topology.ts", () => {
  it("are committed up to date (npm run render)", () => {
    for (const [path, text] of rendered) {
      expect(readFileSync(join(ROOT, "envoy", path), "utf8"), `envoy/${path}`).toBe(text);
    }
  });

  it.each([...rendered.keys()])("envoy --mode validate accepts %s", async (path) => {
    const { code, stdout, stderr } = await runCommand(tool("envoy"), ["--mode", "validate", "--disable-hot-restart", "-l", "error", "-c", join(ROOT, "envoy", path)]);
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
    const routes: Obj[] = edge.static_resources.listeners[0].filter_chains[0].filters[1].typed_config.route_config.virtual_hosts[0].routes;
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
