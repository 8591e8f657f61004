// `npm run observe` next to the mesh: real Zipkin and real Prometheus on loopback, the
// mesh's apps exporting their spans. One Predict is one trace across every hop; a
// killed app fires its alert in Prometheus, and resolves it once back.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { PredictionService } from "../../gen/recsys/prediction/v1/prediction_pb.js";
import { startMesh, type Mesh } from "../../scripts/mesh.js";
import { appTracingEnv, startObserve, type Observe } from "../../scripts/observe.js";

let mesh: Mesh;
let observe: Observe;
const runDir = mkdtempSync(join(tmpdir(), "recsys-observe-test-"));

beforeAll(async () => {
  mesh = await startMesh({ runDir, env: { LOG_LEVEL: "warn", ...appTracingEnv() } });
  observe = await startObserve({ runDir });
}, 300_000);
afterAll(async () => {
  await observe?.stop();
  await mesh?.stop();
  rmSync(runDir, { recursive: true, force: true });
}, 120_000);

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
    const client = createClient(PredictionService, createGrpcTransport({ baseUrl: `http://${mesh.edge}` }));
    const answer = await client.predict({ userId: "u000001", numPredictions: 5, bypassCache: true }, { headers: { "x-canary": "v1" }, timeoutMs: 10_000 });
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
