// `npm run observe` next to the mesh: real Zipkin and real Prometheus on loopback, the
// mesh's apps exporting their spans. One Predict is one trace across every hop (and
// docs/trace.png shows it in Zipkin's UI); the console's dashboard answers from
// Prometheus; a killed app fires its alert in Prometheus, and resolves it once back.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { chromium, type Browser } from "playwright-core";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { PredictionService } from "../../gen/recsys/prediction/v1/prediction_pb.js";
import { localPorts } from "../../envoy/topology.js";
import { startMesh, type Mesh } from "../../scripts/lib/mesh.js";
import { startObserve, type Observe } from "../../scripts/lib/observe.js";
import { ROOT } from "../../scripts/lib/tools.js";
import { startWebConsole, type ConsoleDashboard, type WebConsole } from "../../scripts/lib/web.js";

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const TRACE_SCREENSHOT = join(ROOT, "docs", "trace.png");
const DASHBOARD_SCREENSHOT = join(ROOT, "docs", "dashboard.png");
const GRAFANA = join(ROOT, "observability", "grafana", "recsys-mesh.json");

let mesh: Mesh;
let observe: Observe;
let web: WebConsole;
let browser: Browser;
const runDir = mkdtempSync(join(tmpdir(), "recsys-observe-test-"));

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM}: apt-get install chromium, or set CHROMIUM_PATH to a Chromium binary`);
  mesh = await startMesh({ runDir, env: { LOG_LEVEL: "warn" } });
  observe = await startObserve({ runDir });
  // On its usual port: the one origin the edge's CORS allow-list admits.
  web = await startWebConsole({ port: localPorts.webConsole, edgeUrl: `http://${mesh.edge}`, prometheusUrl: observe.prometheusUrl, zipkinUrl: observe.zipkinUrl });
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
}, 300_000);
afterAll(async () => {
  await browser?.close();
  await web?.stop();
  await observe?.stop();
  await mesh?.stop();
  rmSync(runDir, { recursive: true, force: true });
}, 120_000);

const predictions = () => createClient(PredictionService, createGrpcTransport({ baseUrl: `http://${mesh.edge}` }));

/** Polls until check returns a value (not undefined), or fails with what it saw last. */
async function eventually<T>(what: string, check: () => Promise<T | undefined>, timeoutMs: number, last: () => unknown = () => undefined): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const value = await check().catch(() => undefined);
    if (value !== undefined) return value;
    await new Promise((r) => setTimeout(r, 1000));
  }
  throw new Error(`${what}: not within ${timeoutMs} ms; last seen: ${JSON.stringify(last())}`);
}

interface ZipkinSpan {
  traceId: string;
  id: string;
  parentId?: string;
  name?: string;
  kind?: "SERVER" | "CLIENT";
  localEndpoint?: { serviceName?: string };
}

describe("one Predict, one trace", () => {
  it("holds spans from the edge, prediction's sidecar and app, and the feature and retrieval sidecars and apps", async () => {
    const answer = await predictions().predict({ userId: "u000001", numPredictions: 5, bypassCache: true }, { headers: { "x-canary": "v1" }, timeoutMs: 10_000 });
    const traceId = answer.metadata!.traceId;
    expect(traceId).toMatch(/^[0-9a-f]{32}$/);

    // Every hop's span: edge; the sidecar's ingress (server) and egress (client) spans; the apps' server spans.
    const expected = [
      "edge SERVER",
      "prediction-v1-sidecar SERVER",
      "prediction SERVER",
      "prediction-v1-sidecar CLIENT",
      "feature-sidecar SERVER",
      "feature SERVER",
      "retrieval-sidecar SERVER",
      "retrieval SERVER",
    ];
    let spans: ZipkinSpan[] = [];
    const hop = (s: ZipkinSpan) => `${s.localEndpoint?.serviceName} ${s.kind}`;
    await eventually(
      "every hop's span in Zipkin",
      async () => {
        const res = await fetch(`${observe.zipkinUrl}/api/v2/trace/${traceId}`);
        spans = res.ok ? ((await res.json()) as ZipkinSpan[]) : [];
        const seen = new Set(spans.map(hop));
        return expected.every((e) => seen.has(e)) ? true : undefined;
      },
      90_000,
      () => [...new Set(spans.map(hop))],
    );
    expect(new Set(spans.map((s) => s.traceId))).toEqual(new Set([traceId]));
    // Linked hop to hop: each app's span is the child of its own sidecar's ingress span,
    // and prediction's ingress span the child of the edge's.
    const byId = new Map(spans.map((s) => [s.id, s]));
    const parentOf = (s: ZipkinSpan) => (s.parentId ? byId.get(s.parentId) : undefined);
    for (const [app, sidecar] of [["prediction", "prediction-v1-sidecar"], ["feature", "feature-sidecar"], ["retrieval", "retrieval-sidecar"]]) {
      const server = spans.find((s) => hop(s) === `${app} SERVER`)!;
      expect(parentOf(server) && hop(parentOf(server)!), app).toBe(`${sidecar} SERVER`);
    }
    const ingress = spans.find((s) => hop(s) === "prediction-v1-sidecar SERVER")!;
    expect(parentOf(ingress) && hop(parentOf(ingress)!)).toBe("edge SERVER");

    // The picture for docs/: the trace as Zipkin's UI shows it.
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    try {
      await page.goto(`${observe.zipkinUrl}/zipkin/traces/${traceId}`);
      await page.getByText("retrieval-sidecar", { exact: false }).first().waitFor({ timeout: 30_000 });
      mkdirSync(join(ROOT, "docs"), { recursive: true });
      await page.screenshot({ path: TRACE_SCREENSHOT, fullPage: true });
    } finally {
      await page.close();
    }
    const png = readFileSync(TRACE_SCREENSHOT);
    expect(png.subarray(1, 4).toString()).toBe("PNG");
    expect(png.length).toBeGreaterThan(20_000);
  });
});

interface PrometheusAlert {
  labels: Record<string, string>;
  state: "pending" | "firing";
}

async function prometheus<T>(path: string): Promise<T> {
  const res = await fetch(`${observe.prometheusUrl}${path}`);
  const body = (await res.json()) as { status: string; data: T; error?: string };
  if (body.status !== "success") throw new Error(`${path}: ${body.error}`);
  return body.data;
}

describe("the console's dashboard, from Prometheus", () => {
  it("shows RED per service and version, cache hit rate, answers by rung and the canary split", async () => {
    const client = predictions();
    for (let i = 0; i < 20; i++) await client.predict({ userId: `u${String(i + 1).padStart(6, "0")}`, numPredictions: 5 }, { timeoutMs: 10_000 });
    let dashboard: ConsoleDashboard | undefined;
    const panel = (id: string) => dashboard!.panels.find((p) => p.id === id)!;
    const row = (id: string, labels: Record<string, string>) => panel(id).rows.find((r) => Object.entries(labels).every(([k, v]) => r.labels[k] === v));
    await eventually(
      "the dashboard's figures for prediction v1",
      async () => {
        dashboard = (await (await fetch(`${web.url}/api/dashboard`)).json()) as ConsoleDashboard;
        const ready = (row("rate", { app: "prediction", version: "v1" })?.value ?? 0) > 0 && row("cache", { version: "v1" })?.value !== undefined && (row("canary", { version: "v1" })?.value ?? 0) > 0;
        return ready ? true : undefined;
      },
      60_000,
      () => dashboard,
    );
    expect(dashboard!.prometheus.reachable).toBe(true);
    expect(dashboard!.zipkin.reachable).toBe(true);
    for (const app of ["prediction", "feature", "retrieval"]) expect(row("rate", { app })?.value, app).toBeGreaterThan(0);
    expect(row("errors", { app: "prediction", version: "v1" })?.value).toBeGreaterThanOrEqual(0);
    expect(row("p95", { app: "prediction", version: "v1" })?.value).toBeGreaterThan(0);
    const rungs = panel("rungs").rows.filter((r) => r.labels.version === "v1");
    expect(rungs.length).toBeGreaterThan(0);
    expect(rungs.reduce((sum, r) => sum + (r.value ?? 0), 0)).toBeCloseTo(1, 5);
    const split = panel("canary").rows.reduce((sum, r) => sum + (r.value ?? 0), 0);
    expect(split).toBeCloseTo(1, 5);

    // The page renders the same figures.
    const page = await browser.newPage();
    try {
      await page.goto(web.url);
      await page.locator('#dashboard[data-samples] figure[data-panel="rate"] tbody tr').first().waitFor({ timeout: 30_000 });
      expect(await page.locator('figure[data-panel="rate"] tbody').textContent()).toContain("prediction");
      expect(await page.locator("#dashboard-status").getAttribute("class")).not.toBe("error");
      // An answer's trace id links to its trace in Zipkin.
      await page.getByRole("button", { name: "Predict" }).click();
      const link = page.getByRole("link", { name: "open in Zipkin" });
      await link.waitFor({ timeout: 30_000 });
      expect(await link.getAttribute("href")).toBe(`${observe.zipkinUrl}/zipkin/traces/${await page.locator("#meta-trace").textContent()}`);
      // The picture for docs/: the dashboard with live figures.
      await page.setViewportSize({ width: 1280, height: 900 });
      await page.locator("#dashboard").screenshot({ path: DASHBOARD_SCREENSHOT });
    } finally {
      await page.close();
    }
  });

  it("keeps the Grafana dashboard's queries valid for this Prometheus", async () => {
    type Panel = { type: string; panels?: Panel[]; targets?: { expr: string }[] };
    const grafana = JSON.parse(readFileSync(GRAFANA, "utf8")) as { panels: Panel[] };
    const exprs = grafana.panels.flatMap((p) => (p.type === "row" ? (p.panels ?? []) : [p])).flatMap((p) => (p.targets ?? []).map((t) => t.expr));
    expect(exprs.length).toBeGreaterThan(10);
    for (const expr of exprs) {
      const plain = expr.replaceAll("$__rate_interval", "1m").replace(/\$\{?\w+\}?/g, ".*");
      await prometheus(`/api/v1/query?query=${encodeURIComponent(plain)}`).catch((err: Error) => expect.fail(`${expr}: ${err.message}`));
    }
  });
});

describe("alerts in a live Prometheus", () => {
  it("RecsysTargetDown fires for a killed retrieval app and resolves once it is back", async () => {
    const retrievalUp = async () => {
      const { result } = await prometheus<{ result: { value: [number, string] }[] }>(`/api/v1/query?query=${encodeURIComponent('up{job="recsys-app", app="retrieval"}')}`);
      return result[0]?.value[1];
    };
    const retrievalAlert = async () =>
      (await prometheus<{ alerts: PrometheusAlert[] }>("/api/v1/alerts")).alerts.find((a) => a.labels.alertname === "RecsysTargetDown" && a.labels.app === "retrieval" && a.labels.job === "recsys-app");
    await eventually("retrieval scraped", async () => ((await retrievalUp()) === "1" ? true : undefined), 60_000);
    expect(await retrievalAlert()).toBeUndefined();

    await mesh.killApp("retrieval");
    let alert: PrometheusAlert | undefined;
    await eventually("RecsysTargetDown firing for retrieval", async () => ((alert = await retrievalAlert())?.state === "firing" ? true : undefined), 120_000, () => alert);
    expect(alert!.labels.severity).toBe("warning");

    await mesh.restartApp("retrieval");
    await eventually("RecsysTargetDown resolved", async () => ((alert = await retrievalAlert()) === undefined ? true : undefined), 120_000, () => alert);
    expect(await retrievalUp()).toBe("1");
  });
});
