// The observability pack: Prometheus rules pass promtool and their unit tests, the
// scrape config finds the ports the manifests declare, and every metric the Grafana
// dashboard, the web console's panels, the rules and the autoscaling adapter use is
// one the services register or a real Envoy of ours exports.
import { ensurePki } from "../scripts/lib/pki.js";
import { withPkiAt } from "./support/rendered-pki.js";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { pathToFileURL } from "node:url";
import { parse, stringify } from "yaml";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { instances } from "../envoy/topology.js";
import { ENVOY_STATS_PORT, NAMESPACE, renderBase } from "../k8s/render.js";
import { runCommand, startProcess, type Started } from "../scripts/lib/processes.js";
import { ROOT, TOOLS_BIN, tool } from "../scripts/lib/tools.js";
import { consolePanels } from "../observability/dashboard.js";
import { registry } from "../services/kit/index.js";

const promtool = join(TOOLS_BIN, "promtool");
if (!existsSync(promtool)) throw new Error("promtool is missing: run `node scripts/install-k8s-tools.mjs` (part of npm run setup)");

type Obj = Record<string, any>;
const dir = join(ROOT, "observability");
const read = (file: string) => readFileSync(join(dir, file), "utf8");
const work = mkdtempSync(join(tmpdir(), "observability-test-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const run = (command: string, args: string[]) => runCommand(command, args, 60_000);

/** Grafana's variables, replaced so the query is plain PromQL. */
const plainPromql = (expr: string) => expr.replaceAll("$__rate_interval", "5m").replace(/\$\{?\w+\}?/g, ".*");

const FUNCTION_OR_KEYWORD = new Set(["by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless", "inf", "nan"]);

/** Metric names a PromQL expression reads (not functions, labels, keywords or numbers). */
function metricNames(expr: string): string[] {
  const bare = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '""')
    .replace(/\{[^}]*\}/g, "")
    .replace(/\[[^\]]*\]/g, "")
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, " ")
    .replace(/\$\{?\w+\}?/g, " ");
  return [...bare.matchAll(/(?<![\w:.])([a-zA-Z_:][\w:]*)\b(?!\s*\()/g)].map((m) => m[1]!).filter((name) => !FUNCTION_OR_KEYWORD.has(name.toLowerCase()));
}

const dashboard = JSON.parse(read("grafana/recsys-mesh.json")) as Obj;
const panels = (dashboard.panels as Obj[]).flatMap((p) => (p.type === "row" ? (p.panels as Obj[]) : [p]));
const dashboardQueries: string[] = panels.flatMap((p) => (p.targets ?? []).map((t: Obj) => t.expr as string));
const variableQueries: string[] = dashboard.templating.list.filter((v: Obj) => v.type === "query").map((v: Obj) => v.query.query as string);
const rules = parse(read("alerts.yml")).groups.flatMap((g: Obj) => g.rules) as Obj[];
const modelRules = parse(read("rules/model-monitoring.yml")).groups.flatMap((g: Obj) => g.rules) as Obj[];
const recorded = new Set(rules.filter((r) => r.record).map((r) => r.record as string));
const adapterRules = parse(read("prometheus-adapter.yaml")).rules as Obj[];

/** Asks promtool to parse the queries (as recording rules, so the whole file is one check). */
async function expectValidPromql(name: string, queries: string[]) {
  const file = join(work, `${name}.yml`);
  const asRules = queries.map((expr, i) => ({ record: `${name}:query_${i}`, expr }));
  writeFileSync(file, stringify({ groups: [{ name, rules: asRules }] }));
  const { code, stdout, stderr } = await run(promtool, ["check", "rules", file]);
  expect(stdout + stderr).toContain(`SUCCESS: ${asRules.length} rules found`);
  expect(code).toBe(0);
}

/** The model-monitoring metrics the prediction service exports (services/prediction/drift.ts, model-age.ts, online-accuracy.ts). */
const modelMonitoringMetrics = [
  "recsys_prediction_feature_psi",
  "recsys_prediction_feature_drift_window_rows",
  "recsys_prediction_model_age_seconds",
  "recsys_prediction_model_since_load_seconds",
  "recsys_prediction_model_max_age_seconds",
  "recsys_prediction_online_metric",
  "recsys_prediction_online_lists",
  "recsys_prediction_offline_metric",
  "recsys_prediction_online_offline_ratio",
];

/** The number an alert rule compares its metric with (`> 0.25`, `< 0.95`). */
const alertThreshold = (alert: string) => Number(/[<>]=?\s*([\d.]+)\s*$/.exec(modelRules.find((r) => r.alert === alert)!.expr.trim())![1]);

/** The threshold lines a Grafana panel draws. */
const drawnThresholds = (panel: Obj) => {
  expect(panel.fieldConfig.defaults.custom.thresholdsStyle.mode, panel.title).not.toBe("off");
  return (panel.fieldConfig.defaults.thresholds.steps as Obj[]).map((s) => s.value).filter((v) => v !== null);
};

describe("metric name extraction", () => {
  it("finds the metrics and nothing else", () => {
    const expr = 'sum by (app, le) (rate(a_total{x="y", z=~"b_total"}[5m])) / ignoring (version) b offset 1d > 0.95 and on (c) histogram_quantile(0.9, c_bucket{d="$app"}[$__rate_interval]) or vector(0)';
    expect(metricNames(expr)).toEqual(["a_total", "b", "c_bucket"]);
  });
});

describe("Prometheus rules (observability/alerts.yml)", () => {
  it("pass promtool check rules", async () => {
    const { code, stdout, stderr } = await run(promtool, ["check", "rules", join(dir, "alerts.yml")]);
    expect(stdout + stderr).toContain("SUCCESS");
    expect(code).toBe(0);
  });

  it("fire and stay quiet as their unit tests expect (promtool test rules)", async () => {
    const { code, stdout, stderr } = await run(promtool, ["test", "rules", join(dir, "alerts.test.yml")]);
    expect(stdout + stderr).toContain("SUCCESS");
    expect(code).toBe(0);
  });

  it("cover every alert the issue asks for, each unit-tested", () => {
    const alerts = rules.filter((r) => r.alert).map((r) => r.alert as string);
    for (const topic of [/Latency/, /ErrorRate/, /Fallback/, /CacheHit/, /Freshness/, /ModelStale/, /Canary/]) {
      expect(alerts.some((a) => topic.test(a)), String(topic)).toBe(true);
    }
    const tested = new Set(parse(read("alerts.test.yml")).tests.flatMap((t: Obj) => t.alert_rule_test.filter((a: Obj) => a.exp_alerts.length > 0).map((a: Obj) => a.alertname)));
    expect(alerts.filter((a) => !tested.has(a))).toEqual([]);
  });
});

describe("Prometheus scrape config (observability/prometheus.yml)", () => {
  const config = parse(read("prometheus.yml"));
  const job = (name: string) => config.scrape_configs.find((j: Obj) => j.job_name === name);
  const keptPortName = (j: Obj) => j.relabel_configs.find((r: Obj) => r.source_labels?.includes("__meta_kubernetes_pod_container_port_name")).regex as string;
  const objects = [...renderBase()].filter(([path]) => path.endsWith(".yaml") && !path.startsWith("envoy/")).flatMap(([, text]) => text.split(/^---$/m).map((doc) => parse(doc) as Obj));
  // The mesh's pods (an Envoy each); envoyproxy/ratelimit is a third-party service behind the edge, not scraped.
  const podSpecs = objects.filter((o) => o?.kind === "Deployment" && o.metadata?.name !== "ratelimit").map((d) => d.spec.template);

  it("passes promtool check config, with its rule files", async () => {
    // Debian's promtool is built without Kubernetes discovery: check everything else
    // (relabelling, rule files) with static targets in its place.
    const checkable = structuredClone(config);
    checkable.rule_files = config.rule_files.map((file: string) => join(dir, file));
    for (const j of checkable.scrape_configs) {
      expect(j.kubernetes_sd_configs).toEqual([{ role: "pod", namespaces: { names: [NAMESPACE] } }]);
      delete j.kubernetes_sd_configs;
      j.static_configs = [{ targets: ["127.0.0.1:9090"] }];
    }
    const file = join(work, "prometheus.yml");
    writeFileSync(file, stringify(checkable, { aliasDuplicateObjects: false }));
    const { code, stdout, stderr } = await run(promtool, ["check", "config", file]);
    expect(stdout + stderr).toContain("SUCCESS");
    expect(code).toBe(0);
  });

  it("scrapes every app's metrics port and every Envoy's stats port, as the manifests name them", () => {
    const apps = job("recsys-app");
    const envoys = job("recsys-envoy");
    expect(envoys.metrics_path).toBe("/stats/prometheus");
    for (const template of podSpecs) {
      const ports = [...(template.spec.initContainers ?? []), ...template.spec.containers].flatMap((c: Obj) => c.ports ?? []);
      const name = template.metadata.labels.app;
      expect(ports.find((p: Obj) => p.name === keptPortName(envoys))?.containerPort, `${name} envoy`).toBe(ENVOY_STATS_PORT);
      if (name === "edge") continue;
      const metrics = ports.find((p: Obj) => p.name === keptPortName(apps));
      expect(metrics?.containerPort, `${name} app`).toBe(Number(template.metadata.annotations["prometheus.io/port"]));
      expect(template.metadata.annotations["prometheus.io/scrape"]).toBe("true");
    }
  });

  it("labels every series with the pod's app and version", () => {
    for (const name of ["recsys-app", "recsys-envoy"]) {
      const labelmap = job(name).relabel_configs.find((r: Obj) => r.action === "labelmap");
      expect(labelmap.regex).toBe("__meta_kubernetes_pod_label_(app|version)");
    }
  });
});

describe("Grafana dashboard (observability/grafana/recsys-mesh.json)", () => {
  it("is a dashboard with unique panel ids and a query in every panel", () => {
    expect(dashboard.uid).toBe("recsys-mesh");
    const ids = (dashboard.panels as Obj[]).flatMap((p) => [p.id, ...(p.panels ?? []).map((q: Obj) => q.id)]);
    expect(new Set(ids).size).toBe(ids.length);
    for (const p of panels) expect(p.targets?.length, p.title).toBeGreaterThan(0);
    expect(panels.length).toBeGreaterThan(20);
  });

  it("covers RED per service, cache levels, fallback rungs, freshness and Envoy's circuit, retry and rate-limit stats", () => {
    const all = dashboardQueries.join("\n");
    for (const metric of [
      "grpc_server_handled_total",
      "grpc_server_handling_seconds_bucket",
      "recsys_prediction_cache_lookups_total",
      "recsys_prediction_answers_total",
      "recsys_prediction_fallback_total",
      "recsys_feature_freshness_seconds_bucket",
      "envoy_cluster_upstream_rq_pending_overflow",
      "envoy_cluster_upstream_rq_retry",
      "envoy_cluster_outlier_detection_ejections_active",
      "envoy_http_local_rate_limit_rate_limited",
    ]) {
      expect(all, metric).toContain(metric);
    }
  });

  it("has a model-monitoring row reading every drift, staleness and online-accuracy metric", () => {
    const row = (dashboard.panels as Obj[]).findIndex((p) => p.type === "row" && /^Model monitoring/.test(p.title));
    expect(row).toBeGreaterThan(-1);
    const next = (dashboard.panels as Obj[]).findIndex((p, i) => i > row && p.type === "row");
    const rowQueries = (dashboard.panels as Obj[]).slice(row + 1, next).flatMap((p) => (p.targets ?? []).map((t: Obj) => t.expr as string));
    expect(modelMonitoringMetrics.filter((m) => !rowQueries.some((q) => metricNames(q).includes(m)))).toEqual([]);
  });

  it("draws the model-monitoring alerts' thresholds where the rules put them", () => {
    const reading = (metric: string) => panels.filter((p) => p.type === "timeseries" && p.targets.some((t: Obj) => metricNames(t.expr).includes(metric)));
    const psi = reading("recsys_prediction_feature_psi");
    expect(psi.length).toBeGreaterThan(0);
    // 0.1 is the usual start of a moderate shift; the alert's 0.25 a major one.
    for (const p of psi) expect(drawnThresholds(p)).toEqual([0.1, alertThreshold("RecsysFeatureDrift")]);
    const ratio = reading("recsys_prediction_online_offline_ratio");
    expect(ratio.length).toBeGreaterThan(0);
    for (const p of ratio) expect(drawnThresholds(p)).toEqual([alertThreshold("RecsysOnlineAccuracyLow")]);
    // RecsysModelTooOld compares age with the maximum: the age/maximum panel's line is at 1.
    const ageOverMax = reading("recsys_prediction_model_max_age_seconds");
    expect(ageOverMax.length).toBeGreaterThan(0);
    for (const p of ageOverMax) expect(drawnThresholds(p)).toEqual([1]);
  });

  it("has queries that are valid PromQL (promtool parses them as recording rules)", async () => {
    await expectValidPromql("dashboard", dashboardQueries.map(plainPromql));
  });
});

describe("web console panels (observability/dashboard.ts)", () => {
  it("have unique ids", () => {
    expect(new Set(consolePanels.map((p) => p.id)).size).toBe(consolePanels.length);
  });

  it("ask the model-monitoring questions: worst PSI per model version, model age, online/offline AUC per variant and model", () => {
    const reads = (metric: string) => consolePanels.filter((p) => metricNames(p.query).includes(metric));
    expect(reads("recsys_prediction_feature_psi").map((p) => p.by)).toContainEqual(["version", "model", "model_version", "feature"]);
    expect(reads("recsys_prediction_model_age_seconds").map((p) => [p.by, p.unit])).toContainEqual([["version", "model", "model_version"], "seconds"]);
    const ratio = reads("recsys_prediction_online_offline_ratio");
    expect(ratio.map((p) => [p.by, p.unit])).toContainEqual([["version", "variant", "model", "model_version"], "ratio"]);
    expect(ratio.every((p) => p.query.includes('metric="auc"'))).toBe(true);
  });

  it("have queries that are valid PromQL", async () => {
    await expectValidPromql("console", consolePanels.map((p) => p.query));
  });
});

describe("every metric the dashboard, rules and adapter read is really exported", () => {
  const exported = new Set<string>(["up"]);
  const envoys: Started[] = [];

  /** Adds a metric family, with a histogram's or summary's series suffixes. */
  const add = (name: string, type: string) => {
    exported.add(name);
    if (type === "histogram") for (const suffix of ["_bucket", "_sum", "_count"]) exported.add(name + suffix);
    if (type === "summary") for (const suffix of ["_sum", "_count"]) exported.add(name + suffix);
  };

  beforeAll(async () => {
    // The services' own metrics: every module that registers one, loaded into the kit's registry.
    const sources = (folder: string): string[] =>
      readdirSync(folder, { withFileTypes: true }).flatMap((e) =>
        e.isDirectory() ? (e.name === "test" ? [] : sources(join(folder, e.name))) : e.name.endsWith(".ts") ? [join(folder, e.name)] : [],
      );
    const registering = sources(join(ROOT, "services")).filter((file) => readFileSync(file, "utf8").includes("registers: [registry]"));
    expect(registering.map((f) => relative(ROOT, f))).toEqual(expect.arrayContaining(["services/prediction/metrics.ts", "services/feature/metrics.ts"]));
    for (const file of registering) await import(pathToFileURL(file).href);
    for (const metric of await registry.getMetricsAsJSON()) add(metric.name, String(metric.type));

    // Envoy's: a real Envoy per config kind (a sidecar with egress clusters, and the
    // edge), rendered for Kubernetes, its listeners and admin moved to free loopback ports.
    // The rendered configs read their certificates from the pod's PKI mount: a PKI made here instead.
    const pkiDir = join(work, "pki");
    await ensurePki({ dir: pkiDir });
    await Promise.all(
      [`sidecar-${instances.find((i) => i.service.upstreams.length > 0)!.id}`, "edge"].map(async (name) => {
        const config = parse(withPkiAt(readFileSync(join(ROOT, "envoy", "k8s", `${name}.yaml`), "utf8"), pkiDir));
        const listener = parse(withPkiAt(renderBase().get(`envoy/pod-listener-${name === "edge" ? "edge" : "sidecar"}.yaml`)!, pkiDir));
        for (const l of [...config.static_resources.listeners, ...listener.static_resources.listeners]) l.address.socket_address = { address: "127.0.0.1", port_value: 0 };
        config.admin.address.socket_address = { address: "127.0.0.1", port_value: 0 };
        const file = join(work, `${name}.yaml`);
        writeFileSync(file, stringify(config));
        const adminFile = join(work, `${name}.admin`);
        const args = ["-c", file, "--config-yaml", stringify(listener), "--disable-hot-restart", "-l", "warn", "--admin-address-path", adminFile];
        const started = await startProcess(tool("envoy"), args);
        envoys.push(started);
        const deadline = Date.now() + 20_000;
        while (!existsSync(adminFile) || readFileSync(adminFile, "utf8").trim() === "") {
          if (Date.now() > deadline) throw new Error(`envoy ${name} did not write its admin address:\n${started.output()}`);
          await new Promise((r) => setTimeout(r, 50));
        }
        const stats = await fetch(`http://${readFileSync(adminFile, "utf8").trim()}/stats/prometheus`).then((r) => r.text());
        for (const [, metric, type] of stats.matchAll(/^# TYPE (\S+) (\S+)$/gm)) add(metric!, type!);
      }),
    );
  });
  afterAll(async () => {
    await Promise.all(envoys.map((e) => e.stop()));
  });

  it("knows the registered and Envoy metric families", () => {
    for (const name of ["grpc_server_handled_total", "process_cpu_seconds_total", "nodejs_eventloop_lag_p99_seconds", "recsys_prediction_answers_total", "envoy_cluster_upstream_rq_retry", "envoy_http_local_rate_limit_rate_limited"]) {
      expect(exported.has(name), name).toBe(true);
    }
  });

  it.each([
    ["the dashboard's panels", () => dashboardQueries],
    ["the dashboard's variables", () => variableQueries.map((q) => q.replace(/^label_values\((.*),\s*\w+\)$/, "$1"))],
    ["the web console's panels", () => consolePanels.map((p) => p.query)],
    ["the alerting and recording rules", () => [...rules, ...modelRules].map((r) => r.expr as string)],
    ["the autoscaling adapter", () => adapterRules.map((r) => r.seriesQuery as string)],
  ])("%s", (_what, queries) => {
    const names = queries().flatMap(metricNames);
    expect(names.length).toBeGreaterThan(0);
    expect([...new Set(names.filter((n) => !exported.has(n) && !recorded.has(n)))]).toEqual([]);
  });
});
