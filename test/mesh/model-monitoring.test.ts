// Model monitoring on the real mesh, with `npm run observe`'s Prometheus evaluating the
// project's alert rules (their `for:` cut to seconds):
// - feature drift: Predicts for users whose `user_ctr` was rewritten five times larger
//   move that feature's PSI past the alert's threshold and fire RecsysFeatureDrift for it,
//   while an unshifted feature of the same rows (a user's category affinity) stays quiet.
//   Synthetic traffic differs from the training rows in other features (no device in
//   the request, candidates from retrieval rather than the logged views, an empty event
//   stream), so those read as drifted on a dev mesh, and truly: the test names its two;
// - online accuracy: the held-out slice of the training log replayed as live traffic
//   (each user's session served by Predict over its logged items, the log's clicks sent
//   through IngestEvents) gives online figures next to the manifests' offline ones.
// prediction-v1 takes every call (x-canary), with a drift window small enough to turn
// over within the test and an attribution window of seconds instead of 30 minutes.
import { createReadStream, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EventType, FeatureValueSchema, type FeatureValue } from "../../gen/recsys/common/v1/common_pb.js";
import { EntityType, FeatureService } from "../../gen/recsys/feature/v1/feature_pb.js";
import { PredictionService } from "../../gen/recsys/prediction/v1/prediction_pb.js";
import { localPorts } from "../../envoy/topology.js";
import { findView } from "../../services/feature/registry.js";
import { startMesh, type Mesh } from "../../scripts/lib/mesh.js";
import { startObserve, type Observe } from "../../scripts/lib/observe.js";
import { ROOT } from "../../scripts/lib/tools.js";
import { seededRandom } from "../support/random.js";
import { edgeClient, edgeTokenMinter } from "../support/tokens.js";

const ATTRIBUTION_S = 15;
const DRIFT_WINDOW_ROWS = 1000;
const DRIFT_SAMPLE_RATE = 0.025;
/** Rows a Predict ranks (CANDIDATES_K). */
const CANDIDATES = 200;
const MIN_LISTS = 50;
const SHIFTED = "user_ctr";
const UNSHIFTED = "user_category_affinity";

let mesh: Mesh;
let observe: Observe;
let token: { user: string; service: string; admin: string };
const runDir = mkdtempSync(join(tmpdir(), "recsys-monitoring-test-"));

beforeAll(async () => {
  mesh = await startMesh({
    runDir,
    env: { LOG_LEVEL: "warn" },
    instanceEnv: {
      "prediction-v1": {
        // About 5 of a Predict's 200 ranked rows: a window of 1,000 rows spans some 200 users.
        DRIFT_SAMPLE_RATE: String(DRIFT_SAMPLE_RATE),
        DRIFT_WINDOW_ROWS: String(DRIFT_WINDOW_ROWS),
        ACCURACY_ATTRIBUTION_S: String(ATTRIBUTION_S),
        ACCURACY_MIN_LISTS: String(MIN_LISTS),
      },
    },
  });
  observe = await startObserve({ runDir });
  const mint = await edgeTokenMinter();
  token = { user: mint("monitoring-test"), service: mint("monitoring-test-backend", "enterprise", "service"), admin: mint("monitoring-test-admin", "enterprise", "admin") };
}, 300_000);
afterAll(async () => {
  await observe?.stop();
  await mesh?.stop();
  rmSync(runDir, { recursive: true, force: true });
}, 120_000);

/** One scrape of prediction-v1's own /metrics. */
const scrape = async (): Promise<string> => (await fetch(`http://127.0.0.1:${localPorts.appMetrics("prediction", "v1")}/metrics`)).text();

/** The samples of one metric, from the given scrape or a new one. */
async function samples(metric: string, scraped?: string): Promise<{ labels: Record<string, string>; value: number }[]> {
  const text = scraped ?? (await scrape());
  return [...text.matchAll(new RegExp(`^${metric}\\{([^}]*)\\} (\\S+)$`, "gm"))].map(([, labels, value]) => ({
    labels: Object.fromEntries([...labels!.matchAll(/(\w+)="([^"]*)"/g)].map(([, k, v]) => [k!, v!])),
    value: Number(value),
  }));
}

/** Polls until check returns a value, or fails with what it saw last. */
async function eventually<T>(what: string, check: () => Promise<T | undefined>, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const value = await check();
      if (value !== undefined) return value;
    } catch (err) {
      last = err;
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
  throw new Error(`${what}: not within ${timeoutMs} ms${last ? ` (last error: ${String(last)})` : ""}`);
}

/** Runs f over items, `concurrency` at a time. */
async function each<T>(items: readonly T[], concurrency: number, f: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < items.length) await f(items[next++]!);
    }),
  );
}

const predict = (request: { userId: string; candidateItemIds?: string[]; numPredictions: number }) =>
  edgeClient(PredictionService, mesh.edge, token.user).predict({ ...request, bypassCache: true }, { headers: { "x-canary": "v1" }, timeoutMs: 10_000 });

/** The PSI of a feature over prediction-v1's window, per ranker (undefined until the window holds enough rows). */
async function psi(feature: string): Promise<Map<string, number> | undefined> {
  const found = (await samples("recsys_prediction_feature_psi")).filter((s) => s.labels.version === "v1" && s.labels.feature === feature);
  return found.length > 0 ? new Map(found.map((s) => [s.labels.model!, s.value])) : undefined;
}

interface Alert {
  labels: Record<string, string>;
  state: string;
}
async function alerts(): Promise<Alert[]> {
  const body = (await (await fetch(`${observe.prometheusUrl}/api/v1/alerts`)).json()) as { data: { alerts: Alert[] } };
  return body.data.alerts;
}

describe("online accuracy", () => {
  it("replaying the held-out log through Predict and IngestEvents gives online figures and their ratio to the offline ones", async () => {
    const sessions = replaySessions();
    expect(sessions.length).toBeGreaterThanOrEqual(MIN_LISTS);
    const ingest = edgeClient(FeatureService, mesh.edge, token.service);
    const runId = Date.now().toString(36);
    let served = 0;
    await each(sessions, 8, async (session) => {
      const answer = await predict({ userId: session.userId, candidateItemIds: session.items, numPredictions: session.items.length });
      if (!Object.keys(answer.metadata?.modelVersions ?? {}).some((name) => name.startsWith("ranker-"))) return;
      served++;
      // The log's clicks, now: after the answer and within its attribution window.
      const clickedAt = timestampFromMs(Date.now());
      await ingest.ingestEvents(
        {
          events: session.clicked.map((itemId) => ({ eventId: `replay-${runId}-${session.userId}-${itemId}`, userId: session.userId, itemId, type: EventType.CLICK, timestamp: clickedAt })),
        },
        { timeoutMs: 10_000 },
      );
    });
    expect(served).toBeGreaterThanOrEqual(MIN_LISTS);

    // Lists are final once their attribution window has closed; the figures appear once MIN_LISTS of them have a click and a non-click.
    // Online figures, their ratios and the offline ones from one scrape: lists still closing move the online figure between two.
    const scraped = await eventually(
      "online figures",
      async () => {
        const text = await scrape();
        return (await samples("recsys_prediction_online_metric", text)).some((s) => s.labels.version === "v1" && s.labels.metric === "auc") ? text : undefined;
      },
      (ATTRIBUTION_S + 60) * 1000,
    );
    const online = (await samples("recsys_prediction_online_metric", scraped)).filter((s) => s.labels.version === "v1" && s.labels.metric === "auc");
    const offline = await samples("recsys_prediction_offline_metric", scraped);
    const ratios = (await samples("recsys_prediction_online_offline_ratio", scraped)).filter((s) => s.labels.version === "v1" && s.labels.metric === "auc");
    expect(ratios.length).toBeGreaterThan(0);
    // The served rankers order the logged items better than chance, as they did offline.
    for (const s of online) expect(s.value).toBeGreaterThan(0.6);
    for (const ratio of ratios) {
      const offlineAuc = offline.find((s) => s.labels.model === ratio.labels.model && s.labels.model_version === ratio.labels.model_version && s.labels.metric === "auc");
      const onlineAuc = online.find((s) => s.labels.variant === ratio.labels.variant && s.labels.models === ratio.labels.models);
      expect(offlineAuc, `offline auc of ${ratio.labels.model}`).toBeDefined();
      expect(onlineAuc, `online auc beside ${JSON.stringify(ratio.labels)}`).toBeDefined();
      expect(ratio.value).toBeCloseTo(onlineAuc!.value / offlineAuc!.value, 6);
    }
  }, 300_000);
});

describe("feature drift", () => {
  it("a feature written five times larger drifts past the threshold and fires its alert; an unshifted one stays quiet", async () => {
    const snapshot = await userRows();
    // Traffic like the training rows': users drawn in proportion to their views (one row per view there).
    // Two disjoint halves, so no shifted user's profile sits in prediction's feature cache from before.
    const ids = [...snapshot.keys()];
    const random = seededRandom(24);
    const drawn = (half: string[], n: number) => {
      const weights = half.map((id) => Number(snapshot.get(id)!.user_views));
      const total = weights.reduce((a, b) => a + b, 0);
      return Array.from({ length: n }, () => {
        let r = random() * total;
        return half[weights.findIndex((w) => (r -= w) < 0)] ?? half.at(-1)!;
      });
    };
    const calls = Math.ceil((DRIFT_WINDOW_ROWS / (DRIFT_SAMPLE_RATE * CANDIDATES)) * 1.5);

    // Unshifted traffic fills the window first: the feature near its training distribution.
    await each(drawn(ids.filter((_, k) => k % 2 === 0), calls), 8, async (userId) => void (await predict({ userId, numPredictions: 10 })));
    const before = await eventually("drift figures", () => Promise.all([psi(SHIFTED), psi(UNSHIFTED)]).then(([s, u]) => (s && u ? { s, u } : undefined)), 30_000);
    for (const value of [...before.s.values(), ...before.u.values()]) expect(value).toBeLessThan(0.25);
    expect((await alerts()).filter((a) => a.labels.alertname === "RecsysFeatureDrift" && a.labels.feature === SHIFTED)).toEqual([]);

    // The shift: other users' profiles rewritten with user_ctr scaled, everything else as it was.
    const shiftedCalls = drawn(ids.filter((_, k) => k % 2 === 1), calls);
    const shiftedUsers = [...new Set(shiftedCalls)];
    const rows = shiftedUsers.map((userId) => {
      const values = snapshot.get(userId)!;
      return {
        entityType: EntityType.USER,
        entityId: userId,
        featureView: "user_profile",
        values: Object.fromEntries(Object.entries({ ...values, [SHIFTED]: 5 * (values[SHIFTED] as number) }).map(([name, value]) => [name, featureValue(name, value)])),
        eventTime: timestampFromMs(Date.now()),
      };
    });
    const written = await edgeClient(FeatureService, mesh.edge, token.admin).writeFeatures({ rows }, { timeoutMs: 10_000 });
    expect(written.rowsWritten).toBe(rows.length);
    await each(shiftedCalls, 8, async (userId) => void (await predict({ userId, numPredictions: 10 })));

    const after = await eventually("the shifted window", () => Promise.all([psi(SHIFTED), psi(UNSHIFTED)]).then(([s, u]) => (s && [...s.values()].every((v) => v > 0.25) ? { s, u: u! } : undefined)), 30_000);
    for (const value of after.u.values()) expect(value).toBeLessThan(0.25);

    const firing = await eventually(
      "RecsysFeatureDrift firing for the shifted feature",
      async () => {
        const drift = (await alerts()).filter((a) => a.labels.alertname === "RecsysFeatureDrift");
        return drift.some((a) => a.labels.feature === SHIFTED && a.labels.version === "v1" && a.state === "firing") ? drift : undefined;
      },
      90_000,
    );
    expect(firing.filter((a) => a.labels.feature === UNSHIFTED)).toEqual([]);
  }, 300_000);
});

/** The committed feature snapshot's user_profile values, by user. */
async function userRows(): Promise<Map<string, Record<string, unknown>>> {
  const rows = new Map<string, Record<string, unknown>>();
  const lines = createInterface({ input: createReadStream(join(ROOT, "models", "features", "v1", "user_features.jsonl")) });
  for await (const line of lines) {
    const row = JSON.parse(line) as { entity_id: string; values: Record<string, unknown> };
    rows.set(row.entity_id, row.values);
  }
  return rows;
}

/** A snapshot value as the registry types it. */
function featureValue(name: string, value: unknown): FeatureValue {
  const type = findView("user_profile")!.features.find((f) => f.name === name)!.type;
  switch (type) {
    case "double":
      return create(FeatureValueSchema, { kind: { case: "doubleValue", value: value as number } });
    case "int64":
      return create(FeatureValueSchema, { kind: { case: "int64Value", value: BigInt(value as number) } });
    case "string":
      return create(FeatureValueSchema, { kind: { case: "stringValue", value: value as string } });
    case "double_map":
      return create(FeatureValueSchema, { kind: { case: "doubleMap", value: { values: value as Record<string, number> } } });
    default:
      throw new Error(`user_profile:${name} has type ${type}, which this test does not write`);
  }
}

/**
 * The held-out slice of the training log (models/parity/v1/replay.jsonl: validation
 * impressions with the clicks that followed), one session per user (views less than 30
 * minutes apart): each user's first session with a click and a non-click, so no click
 * of one answer can land in another answer of the same user.
 */
function replaySessions(): { userId: string; items: string[]; clicked: string[] }[] {
  type Impression = { user_id: string; item_id: string; at: number; label: number };
  const impressions = readFileSync(join(ROOT, "models", "parity", "v1", "replay.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((line) => JSON.parse(line) as Impression);
  const byUser = new Map<string, Impression[]>();
  for (const imp of impressions) byUser.set(imp.user_id, [...(byUser.get(imp.user_id) ?? []), imp]);
  const sessions: { userId: string; items: string[]; clicked: string[] }[] = [];
  for (const [userId, list] of byUser) {
    list.sort((a, b) => a.at - b.at);
    let start = 0;
    for (let k = 1; k <= list.length; k++) {
      if (k < list.length && list[k]!.at - list[k - 1]!.at <= 1800) continue;
      const session = list.slice(start, k);
      start = k;
      const items = [...new Set(session.map((i) => i.item_id))];
      const clicked = [...new Set(session.filter((i) => i.label === 1).map((i) => i.item_id))];
      if (clicked.length > 0 && clicked.length < items.length) {
        sessions.push({ userId, items, clicked });
        break;
      }
    }
  }
  return sessions;
}
