// The console's page: asks the edge for predictions over gRPC-web or Connect with
// the generated client, renders the answer and its metadata (its trace id linked to
// Zipkin), polls the console server's read-only /api/stats for the edge's live
// figures and /api/dashboard for Prometheus' panels and alerts.
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";
import { CacheLevel, FallbackLevel, PredictionService, type PredictResponse, type StageLatency } from "../../gen/recsys/prediction/v1/prediction_pb.js";
import type { ConsolePanel } from "../../observability/dashboard.js";

type Protocol = "grpc-web" | "connect";

interface ConsoleStats {
  edge: { reachable: boolean; qps: number | null; errorsByCode: Record<string, number>; rateLimited: number; canaryWeights: Record<string, number> };
  prediction: { version: string; reachable: boolean; answers: number; fallbackRate: number | null }[];
}

interface ConsoleDashboard {
  prometheus: { reachable: boolean; error?: string };
  zipkin: { reachable: boolean };
  panels: (Omit<ConsolePanel, "query"> & { rows: { labels: Record<string, string>; value: number | null }[] })[];
  alerts: { name: string; state: string; severity: string; summary: string }[];
}

interface ConsoleConfig {
  edge: string;
  zipkin?: string;
}

const STATS_INTERVAL_MS = 2000;
const DASHBOARD_INTERVAL_MS = 5000;
const REQUEST_TIMEOUT_MS = 5000;

const byId = <T extends HTMLElement>(id: string) => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} missing from the page`);
  return el as T;
};
const text = (id: string, value: string) => (byId(id).textContent = value);
const levelName = (names: Record<number, string>, prefix: string, value: number) => (names[value] ?? String(value)).replace(prefix, "").toLowerCase();

/** The console server's /config.json; ?edge=<url> overrides its edge. */
async function consoleConfig(): Promise<ConsoleConfig> {
  const config = (await (await fetch("/config.json")).json()) as ConsoleConfig;
  const param = new URLSearchParams(location.search).get("edge");
  return param ? { ...config, edge: new URL(param).origin } : config;
}

function transports(baseUrl: string): Record<Protocol, Transport> {
  return {
    "grpc-web": createGrpcWebTransport({ baseUrl }),
    // JSON, so the calls read plainly in the browser's network panel.
    connect: createConnectTransport({ baseUrl, useBinaryFormat: false }),
  };
}

function renderStages(stages: StageLatency[]) {
  const list = byId<HTMLUListElement>("stages");
  list.replaceChildren();
  const longest = Math.max(...stages.map((s) => s.ms), 0.001);
  for (const stage of stages) {
    const item = document.createElement("li");
    const name = document.createElement("span");
    name.textContent = stage.stage;
    const track = document.createElement("span");
    track.className = "track";
    track.setAttribute("aria-hidden", "true");
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.display = "block";
    bar.style.width = `${(100 * stage.ms) / longest}%`;
    track.append(bar);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = stage.ms.toFixed(2);
    item.append(name, track, value);
    list.append(item);
  }
  byId("stages-figure").hidden = stages.length === 0;
}

function renderItems(res: PredictResponse) {
  const body = byId<HTMLTableElement>("items").tBodies[0]!;
  body.replaceChildren();
  for (const p of res.predictions) {
    const row = body.insertRow();
    for (const [value, cls] of [[String(p.rank), ""], [p.itemId, ""], [p.category, ""], [p.score.toFixed(4), "score"], [p.explanation, ""]] as const) {
      const cell = row.insertCell();
      cell.textContent = value;
      if (cls) cell.className = cls;
    }
  }
  byId("items").hidden = res.predictions.length === 0;
}

function renderAnswer(res: PredictResponse, protocol: Protocol, servedBy: string | null, zipkin: string | undefined) {
  const meta = res.metadata;
  text("meta-transport", protocol === "grpc-web" ? "gRPC-web" : "Connect");
  text("meta-version", servedBy ?? "not exposed by the edge");
  text("meta-variant", meta?.variant || "–");
  text("meta-experiment", meta?.experimentId || "none");
  text("meta-cache", levelName(CacheLevel, "CACHE_LEVEL_", meta?.cacheLevel ?? 0));
  const fallback = levelName(FallbackLevel, "FALLBACK_LEVEL_", meta?.fallbackLevel ?? 0);
  const degraded = (meta?.fallbackLevel ?? 0) > FallbackLevel.PRIMARY;
  text("meta-fallback", degraded && meta?.fallbackReason ? `${fallback} (${meta.fallbackReason})` : fallback + (meta?.stale ? " (stale)" : ""));
  byId("meta-fallback").classList.toggle("degraded", degraded);
  text("meta-models", Object.entries(meta?.modelVersions ?? {}).map(([k, v]) => `${k} ${v}`).join(", ") || "–");
  text("meta-latency", `${(meta?.latencyMs ?? 0).toFixed(1)} ms`);
  text("meta-trace", meta?.traceId || "–");
  const traceLink = byId<HTMLAnchorElement>("meta-trace-link");
  // Shown once the dashboard has seen Zipkin answer (npm run observe).
  traceLink.dataset.trace = zipkin && meta?.traceId ? `${zipkin}/zipkin/traces/${meta.traceId}` : "";
  showTraceLink();
  byId("meta").hidden = false;
  renderStages(meta?.stages ?? []);
  renderItems(res);
}

function formValues() {
  const form = byId<HTMLFormElement>("predict-form");
  const data = new FormData(form);
  return {
    userId: String(data.get("user") ?? "").trim(),
    count: Number(data.get("count")),
    device: Number(data.get("device")),
    protocol: (data.get("transport") === "connect" ? "connect" : "grpc-web") as Protocol,
    canary: String(data.get("canary") ?? ""),
    bypassCache: data.get("bypass") === "on",
  };
}

function setupPredict(clients: Record<Protocol, ReturnType<typeof createClient<typeof PredictionService>>>, zipkin: string | undefined) {
  const form = byId<HTMLFormElement>("predict-form");
  const button = byId<HTMLButtonElement>("predict");
  const status = byId("status");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const v = formValues();
    button.disabled = true;
    status.className = "";
    status.textContent = `Asking over ${v.protocol === "grpc-web" ? "gRPC-web" : "Connect"}…`;
    let servedBy: string | null = null;
    const started = performance.now();
    try {
      const res = await clients[v.protocol].predict(
        { userId: v.userId, numPredictions: v.count, context: { device: v.device }, bypassCache: v.bypassCache },
        {
          timeoutMs: REQUEST_TIMEOUT_MS,
          headers: v.canary ? { "x-canary": v.canary } : {},
          onHeader: (h) => (servedBy = h.get("x-service-version")),
        },
      );
      renderAnswer(res, v.protocol, servedBy, zipkin);
      status.textContent = `${res.predictions.length} items for ${v.userId} in ${(performance.now() - started).toFixed(0)} ms.`;
      byId("result").dataset.protocol = v.protocol;
    } catch (err) {
      const e = ConnectError.from(err);
      status.className = "error";
      status.textContent = `${Code[e.code]}: ${e.rawMessage}`;
    } finally {
      button.disabled = false;
    }
  });
}

function renderStats(s: ConsoleStats) {
  text("stat-qps", s.edge.qps === null ? "–" : s.edge.qps.toFixed(1));
  text("stat-weights", Object.entries(s.edge.canaryWeights).map(([v, w]) => `${v} ${w}%`).join(" · ") || "–");
  text("stat-limited", String(s.edge.rateLimited));
  const errors = Object.entries(s.edge.errorsByCode);
  text("stat-errors", errors.length ? errors.map(([code, n]) => `${code} ${n}`).join(" · ") : "none");
  text(
    "stat-fallback",
    s.prediction.map((p) => `${p.version} ${!p.reachable ? "down" : p.fallbackRate === null ? "no answers yet" : `${(100 * p.fallbackRate).toFixed(1)}% of ${p.answers}`}`).join(" · "),
  );
}

/**
 * Reads a console endpoint now and every intervalMs, renders it, and reports in the
 * section's status line; returns the read, for a manual refresh.
 */
function pollSection<T>(section: string, url: string, intervalMs: number, render: (body: T) => string, paused = () => false): () => Promise<void> {
  const status = byId(`${section}-status`);
  const poll = async () => {
    if (paused()) return;
    try {
      const body = (await (await fetch(url)).json()) as T;
      status.className = "";
      status.textContent = render(body);
      byId(section).dataset.samples = String(Number(byId(section).dataset.samples ?? 0) + 1);
    } catch {
      status.className = "error";
      status.textContent = "The console server does not answer.";
    }
  };
  void poll();
  setInterval(() => void poll(), intervalMs);
  return poll;
}

const updatedNow = () => `Updated ${new Date().toLocaleTimeString()}.`;

function setupStats() {
  const toggle = byId<HTMLButtonElement>("stats-toggle");
  let paused = false;
  const poll = pollSection<ConsoleStats>(
    "stats",
    "/api/stats",
    STATS_INTERVAL_MS,
    (s) => {
      renderStats(s);
      return s.edge.reachable ? updatedNow() : "The edge's stats are unreachable.";
    },
    () => paused,
  );
  toggle.addEventListener("click", () => {
    paused = !paused;
    toggle.setAttribute("aria-pressed", String(paused));
    toggle.textContent = paused ? "Resume updates" : "Pause updates";
    if (!paused) void poll();
  });
}

/** A duration in the largest unit that keeps it readable: a latency in ms, a model's age in days. */
function formatDuration(seconds: number): string {
  if (seconds < 1) return `${(1000 * seconds).toFixed(1)} ms`;
  if (seconds < 120) return `${seconds.toFixed(2)} s`;
  if (seconds < 2 * 3600) return `${(seconds / 60).toFixed(1)} min`;
  if (seconds < 2 * 86400) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} days`;
}

function formatValue(unit: ConsolePanel["unit"], value: number | null): string {
  if (value === null) return "–";
  if (unit === "ratio") return `${(100 * value).toFixed(1)}%`;
  if (unit === "per_second") return `${value.toFixed(2)}/s`;
  if (unit === "number") return value.toFixed(3);
  return formatDuration(value);
}

function renderPanel(panel: ConsoleDashboard["panels"][number]): HTMLElement {
  const figure = document.createElement("figure");
  figure.dataset.panel = panel.id;
  const table = document.createElement("table");
  table.createCaption().textContent = panel.title;
  const head = table.createTHead().insertRow();
  for (const label of [...panel.by, "value"]) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = label;
    head.append(th);
  }
  const body = table.createTBody();
  for (const row of panel.rows) {
    const tr = body.insertRow();
    for (const label of panel.by) tr.insertCell().textContent = row.labels[label] ?? "";
    const cell = tr.insertCell();
    cell.className = "value";
    cell.textContent = formatValue(panel.unit, row.value);
  }
  if (panel.rows.length === 0) {
    const cell = body.insertRow().insertCell();
    cell.colSpan = panel.by.length + 1;
    cell.textContent = "no data yet";
  }
  figure.append(table);
  return figure;
}

let zipkinReachable = false;

function showTraceLink() {
  const link = byId<HTMLAnchorElement>("meta-trace-link");
  link.hidden = !(zipkinReachable && link.dataset.trace);
  if (!link.hidden) link.href = link.dataset.trace!;
}

function renderDashboard(d: ConsoleDashboard) {
  zipkinReachable = d.zipkin.reachable;
  showTraceLink();
  byId("dashboard-body").hidden = !d.prometheus.reachable;
  const alerts = byId<HTMLUListElement>("alerts");
  alerts.replaceChildren(
    ...(d.alerts.length
      ? d.alerts.map((a) => {
          const item = document.createElement("li");
          item.className = a.state;
          item.textContent = `${a.name} (${a.state}, ${a.severity}): ${a.summary}`;
          return item;
        })
      : [Object.assign(document.createElement("li"), { textContent: "none active" })]),
  );
  byId("panels").replaceChildren(...d.panels.map(renderPanel));
}

function setupDashboard() {
  pollSection<ConsoleDashboard>("dashboard", "/api/dashboard", DASHBOARD_INTERVAL_MS, (d) => {
    renderDashboard(d);
    return d.prometheus.reachable ? updatedNow() : "Prometheus is not running here: npm run observe starts it (and Zipkin).";
  });
}

async function main() {
  const users = byId<HTMLDataListElement>("users");
  for (let i = 1; i <= 20; i++) users.append(new Option(`u${String(i).padStart(6, "0")}`));
  const config = await consoleConfig();
  text("edge-url", config.edge);
  const t = transports(config.edge);
  setupPredict({ "grpc-web": createClient(PredictionService, t["grpc-web"]), connect: createClient(PredictionService, t.connect) }, config.zipkin);
  setupStats();
  setupDashboard();
  document.body.dataset.ready = "true";
}

main().catch((err: unknown) => {
  text("status", `The console could not start: ${String(err)}`);
  byId("status").className = "error";
});
