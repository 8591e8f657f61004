// The browser console (web/): bundles web/src/main.ts with esbuild in memory and
// serves it on its own loopback port, next to two small read-only endpoints.
// /api/stats reads the edge's admin stats and each prediction instance's /metrics
// here, server-side, and answers a small JSON: the browser never reaches Envoy's
// admin port, which can also change runtime values and shut Envoy down.
// /api/dashboard asks Prometheus (npm run observe) the dashboard's fixed queries
// (observability/dashboard.ts) and its active alerts: no PromQL from the browser.
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { build } from "esbuild";
import { localPorts, observePorts } from "../../envoy/topology.js";
import { consolePanels, type ConsolePanel } from "../../observability/dashboard.js";
import { stats } from "./envoy-admin.js";
import { ROOT } from "./tools.js";

export interface WebConsoleOptions {
  /** Loopback port of the console (0: any free one). */
  port?: number;
  /** The edge the page calls, as the browser sees it. */
  edgeUrl?: string;
  /** The edge's admin API, read server-side only. */
  edgeAdmin?: string;
  /** Each prediction version's Prometheus /metrics, read server-side only. */
  metricsUrls?: Record<string, string>;
  /** The Prometheus the dashboard asks, server-side only. */
  prometheusUrl?: string;
  /** Zipkin's UI, where the page links a trace id. */
  zipkinUrl?: string;
}

export interface WebConsole {
  /** http://127.0.0.1:<port> */
  url: string;
  stop(): Promise<void>;
}

/** What GET /api/stats answers. */
export interface ConsoleStats {
  at: string;
  edge: {
    reachable: boolean;
    /** Downstream requests per second since the previous /api/stats call; null on the first. */
    qps: number | null;
    requests: number;
    /** gRPC answers other than OK from upstream clusters, by status code name, since the edge started. */
    errorsByCode: Record<string, number>;
    /** Calls the edge refused itself (rate limit), since it started. */
    rateLimited: number;
    /** Percent of unforced Predict calls sent to each prediction version first. */
    canaryWeights: Record<string, number>;
  };
  prediction: { version: string; reachable: boolean; answers: number; byRung: Record<string, number>; fallbackRate: number | null }[];
}

/** What GET /api/dashboard answers. */
export interface ConsoleDashboard {
  at: string;
  prometheus: { reachable: boolean; error?: string };
  /** Whether Zipkin answers, so the page links trace ids only when they lead somewhere. */
  zipkin: { reachable: boolean };
  panels: (Omit<ConsolePanel, "query"> & { rows: { labels: Record<string, string>; value: number | null }[] })[];
  alerts: { name: string; state: string; severity: string; summary: string }[];
}

const WEB = join(ROOT, "web");
const grpcCodeNames = ["OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"];

/** Calls the edge refused for a rate limit: the global limit's over-limit answers and the local backstop's. */
const rateLimitedStats = [/^cluster\.[^.]+\.ratelimit\.over_limit$/, /^edge_backstop_ratelimit\.http_local_rate_limit\.rate_limited$/];

/** The console's script, bundled for browsers. */
export async function buildConsole(): Promise<string> {
  const result = await build({
    entryPoints: [join(WEB, "src", "main.ts")],
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "es2022",
    minify: true,
    write: false,
    logLevel: "silent",
  });
  return result.outputFiles[0]!.text;
}

/** Percent weights of the prediction versions, from the edge's runtime (the canary's key). */
async function canaryWeights(edgeAdmin: string): Promise<Record<string, number>> {
  const body = (await (await fetch(`${edgeAdmin}/runtime?format=json`)).json()) as { entries?: Record<string, { final_value?: string }> };
  const canary = Number(body.entries?.["routing.prediction.prediction-v2"]?.final_value ?? 0);
  return { v1: 100 - canary, v2: canary };
}

/** Predict answers by fallback rung, from one prediction instance's /metrics. */
async function answersByRung(metricsUrl: string): Promise<Record<string, number>> {
  const text = await (await fetch(metricsUrl)).text();
  const byRung: Record<string, number> = {};
  for (const line of text.split("\n")) {
    const match = /^recsys_prediction_answers_total\{[^}]*rung="([^"]+)"[^}]*\} (\S+)$/.exec(line);
    if (match) byRung[match[1]!] = (byRung[match[1]!] ?? 0) + Number(match[2]);
  }
  return byRung;
}

/** Reads the stats; keeps the previous request count to turn it into a rate. */
function statsReader(edgeAdmin: string, metricsUrls: Record<string, string>) {
  let previous: { at: number; requests: number } | undefined;
  return async (): Promise<ConsoleStats> => {
    const at = Date.now();
    const edge: ConsoleStats["edge"] = { reachable: false, qps: null, requests: 0, errorsByCode: {}, rateLimited: 0, canaryWeights: {} };
    try {
      const s = await stats(edgeAdmin, `^(http\\.edge\\.downstream_rq_total|cluster\\.[^.]+\\.ratelimit\\.over_limit|edge_backstop_ratelimit\\.http_local_rate_limit\\.rate_limited|cluster\\.[^.]+\\.grpc\\..*\\.[0-9]+)$`);
      edge.requests = s.get("http.edge.downstream_rq_total") ?? 0;
      edge.rateLimited = [...s].filter(([name]) => rateLimitedStats.some((re) => re.test(name))).reduce((sum, [, value]) => sum + value, 0);
      for (const [name, value] of s) {
        const code = /^cluster\.[^.]+\.grpc\..*\.([0-9]+)$/.exec(name)?.[1];
        if (code && code !== "0" && value > 0) {
          const codeName = grpcCodeNames[Number(code)] ?? code;
          edge.errorsByCode[codeName] = (edge.errorsByCode[codeName] ?? 0) + value;
        }
      }
      edge.canaryWeights = await canaryWeights(edgeAdmin);
      edge.reachable = true;
      if (previous && at > previous.at) edge.qps = Math.max(0, ((edge.requests - previous.requests) * 1000) / (at - previous.at));
      previous = { at, requests: edge.requests };
    } catch {
      previous = undefined;
    }
    const prediction = await Promise.all(
      Object.entries(metricsUrls).map(async ([version, url]) => {
        const byRung = await answersByRung(url).catch(() => undefined);
        const answers = Object.values(byRung ?? {}).reduce((a, b) => a + b, 0);
        const fallbacks = answers - (byRung?.primary ?? 0);
        return { version, reachable: byRung !== undefined, answers, byRung: byRung ?? {}, fallbackRate: answers > 0 ? fallbacks / answers : null };
      }),
    );
    return { at: new Date(at).toISOString(), edge, prediction };
  };
}

interface PrometheusAnswer<T> {
  status: string;
  data: T;
  error?: string;
}

async function askPrometheus<T>(prometheusUrl: string, path: string): Promise<T> {
  const res = await fetch(`${prometheusUrl}${path}`, { signal: AbortSignal.timeout(3000) });
  const body = (await res.json()) as PrometheusAnswer<T>;
  if (body.status !== "success") throw new Error(body.error ?? `HTTP ${res.status}`);
  return body.data;
}

/** The dashboard's panels and Prometheus' active alerts, read now. */
async function readDashboard(prometheusUrl: string, zipkinUrl: string): Promise<ConsoleDashboard> {
  const at = new Date().toISOString();
  const zipkin = { reachable: await fetch(`${zipkinUrl}/health`, { signal: AbortSignal.timeout(2000) }).then((r) => r.ok, () => false) };
  try {
    const panels = await Promise.all(
      consolePanels.map(async ({ query, ...panel }) => {
        const { result } = await askPrometheus<{ result: { metric: Record<string, string>; value: [number, string] }[] }>(prometheusUrl, `/api/v1/query?query=${encodeURIComponent(query)}`);
        const rows = result
          .map((r) => ({ labels: Object.fromEntries(panel.by.map((l) => [l, r.metric[l] ?? ""])), value: Number.isFinite(Number(r.value[1])) ? Number(r.value[1]) : null }))
          .sort((a, b) => panel.by.map((l) => a.labels[l]!).join(" ").localeCompare(panel.by.map((l) => b.labels[l]!).join(" ")));
        return { ...panel, rows };
      }),
    );
    const { alerts } = await askPrometheus<{ alerts: { labels: Record<string, string>; annotations: Record<string, string>; state: string }[] }>(prometheusUrl, "/api/v1/alerts");
    return {
      at,
      prometheus: { reachable: true },
      zipkin,
      panels,
      alerts: alerts.map((a) => ({ name: a.labels.alertname ?? "", state: a.state, severity: a.labels.severity ?? "", summary: a.annotations.summary ?? "" })),
    };
  } catch (err) {
    return { at, prometheus: { reachable: false, error: err instanceof Error ? err.message : String(err) }, zipkin, panels: [], alerts: [] };
  }
}

/**
 * Starts the console's server on 127.0.0.1. It serves a fixed set of paths, nothing
 * from the file system by request path, and only GET/HEAD.
 */
export async function startWebConsole(options: WebConsoleOptions = {}): Promise<WebConsole> {
  const edgeUrl = options.edgeUrl ?? `http://127.0.0.1:${localPorts.edge}`;
  const edgeAdmin = options.edgeAdmin ?? `http://127.0.0.1:${localPorts.edgeAdmin}`;
  const metricsUrls = options.metricsUrls ?? Object.fromEntries(["v1", "v2"].map((v) => [v, `http://127.0.0.1:${localPorts.appMetrics("prediction", v)}/metrics`]));
  const readStats = statsReader(edgeAdmin, metricsUrls);
  const prometheusUrl = options.prometheusUrl ?? `http://127.0.0.1:${observePorts.prometheus}`;
  const zipkinUrl = options.zipkinUrl ?? `http://127.0.0.1:${observePorts.zipkin}`;
  const script = await buildConsole();
  const staticFiles: Record<string, { type: string; body: string }> = {
    "/": { type: "text/html; charset=utf-8", body: readFileSync(join(WEB, "index.html"), "utf8") },
    "/console.css": { type: "text/css; charset=utf-8", body: readFileSync(join(WEB, "console.css"), "utf8") },
    "/console.js": { type: "text/javascript; charset=utf-8", body: script },
  };
  // The page may call the configured edge and, through ?edge=, another edge on this machine.
  const csp = `default-src 'self'; connect-src 'self' ${new URL(edgeUrl).origin} http://127.0.0.1:* http://localhost:*; img-src 'self' data:; style-src 'self'; script-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'`;
  const send = (res: ServerResponse, status: number, type: string, body: string) => {
    res.writeHead(status, { "content-type": type, "cache-control": "no-store", "x-content-type-options": "nosniff", "content-security-policy": csp, "referrer-policy": "no-referrer" });
    res.end(body);
  };
  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.setHeader("allow", "GET, HEAD");
      return send(res, 405, "text/plain", "read-only\n");
    }
    const path = new URL(req.url ?? "/", "http://console").pathname;
    const file = staticFiles[path === "/index.html" ? "/" : path];
    if (file) return send(res, 200, file.type, file.body);
    if (path === "/config.json") return send(res, 200, "application/json", JSON.stringify({ edge: edgeUrl, zipkin: zipkinUrl }));
    if (path === "/api/stats") return send(res, 200, "application/json", JSON.stringify(await readStats()));
    if (path === "/api/dashboard") return send(res, 200, "application/json", JSON.stringify(await readDashboard(prometheusUrl, zipkinUrl)));
    send(res, 404, "text/plain", "not found\n");
  };
  const server = createServer((req, res) => {
    handle(req, res).catch(() => send(res, 500, "text/plain", "stats unavailable\n"));
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port ?? localPorts.webConsole, "127.0.0.1", resolve);
  });
  const address = server.address();
  const port = typeof address === "object" && address ? address.port : 0;
  return {
    url: `http://127.0.0.1:${port}`,
    stop: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
