import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { ROOT } from "../../../scripts/lib/tools.js";
import { seededRandom } from "../../../test/support/random.js";
import { registry } from "../../kit/index.js";
import { OnnxModel } from "../models.js";
import { ATTRIBUTION_MS, OnlineAccuracy, auc, registerOfflineFigures } from "../online-accuracy.js";

/*
 * Replays the held-out slice of the training log (models/parity/v1/replay.jsonl: the
 * validation impressions of 100 users, with the clicks that followed them) as live
 * traffic: each session of a user (views less than 30 minutes apart) is one Predict
 * answer, its items ranked by the real ONNX ranker over their real feature rows and
 * served at the session's first view; the log's clicks arrive at their own times. A
 * clock follows the replay, so attribution windows close as they would have.
 */

const MODELS = join(ROOT, "models");
const PARITY = join(MODELS, "parity", "v1");
const SESSION_GAP_S = 1800;

interface Impression {
  user_id: string;
  item_id: string;
  at: number;
  label: number;
  outcome_at: number | null;
}

const impressions = readFileSync(join(PARITY, "replay.jsonl"), "utf8")
  .trim()
  .split("\n")
  .map((line) => JSON.parse(line) as Impression);
const bytes = readFileSync(join(PARITY, "replay_features.f32"));
const rows = new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
const manifestMetrics = (name: string) => JSON.parse(readFileSync(join(MODELS, name, "v1", "manifest.json"), "utf8")).metrics as Record<string, number>;

let gbdtScores: Float32Array;
beforeAll(async () => {
  const model = await OnnxModel.load(join(MODELS, "ranker-gbdt", "v1"));
  try {
    gbdtScores = await model.score(rows, impressions.length);
  } finally {
    await model.release();
  }
  registerOfflineFigures("ranker-gbdt", "v1", manifestMetrics("ranker-gbdt"));
});

const opened: OnlineAccuracy[] = [];
afterEach(() => {
  for (const tracker of opened.splice(0)) tracker.close();
});
afterAll(() => registerOfflineFigures("ranker-gbdt", "v1", {}));

/** The replay's sessions: indices of each user's impressions, split where views are 30 minutes apart. */
function sessions(): number[][] {
  const byUser = new Map<string, number[]>();
  impressions.forEach((imp, k) => byUser.set(imp.user_id, [...(byUser.get(imp.user_id) ?? []), k]));
  const out: number[][] = [];
  for (const list of byUser.values()) {
    list.sort((a, b) => impressions[a]!.at - impressions[b]!.at);
    let current = [list[0]!];
    for (const k of list.slice(1)) {
      if (impressions[k]!.at - impressions[current.at(-1)!]!.at > SESSION_GAP_S) {
        out.push(current);
        current = [];
      }
      current.push(k);
    }
    out.push(current);
  }
  return out;
}

/**
 * Serves every session as `variant`, ranked by `score`, and replays the log's clicks,
 * all in time order with the tracker's clock following; then lets the last windows close.
 */
function replay(tracker: OnlineAccuracy, clock: { now: number }, variant: string, score: (k: number) => number): void {
  type Event = { atMs: number; run: () => void };
  const events: Event[] = [];
  sessions().forEach((session, s) => {
    const items = session.map((k) => ({ itemId: impressions[k]!.item_id, score: score(k) })).sort((a, b) => b.score - a.score);
    const first = impressions[session[0]!]!;
    const answer = { requestId: `${variant}-${s}`, userId: first.user_id, items, variant, modelVersions: { "ranker-gbdt": "v1" }, atMs: first.at * 1000 };
    events.push({ atMs: answer.atMs, run: () => tracker.served(answer) });
  });
  for (const imp of impressions) {
    if (imp.outcome_at !== null) events.push({ atMs: imp.outcome_at * 1000, run: () => tracker.outcome(imp.user_id, imp.item_id, imp.outcome_at! * 1000) });
  }
  // A click at the very second of its view comes after the answer that showed it.
  events.sort((a, b) => a.atMs - b.atMs);
  for (const event of events) {
    clock.now = event.atMs;
    event.run();
  }
  clock.now += ATTRIBUTION_MS + 1;
}

function open(clock: { now: number }): OnlineAccuracy {
  const tracker = new OnlineAccuracy({ serviceVersion: "v1", minLists: 50, now: () => clock.now });
  opened.push(tracker);
  return tracker;
}

/** Samples of one metric from the registry's Prometheus text, by their labels. */
async function scraped(metric: string): Promise<Record<string, string>[]> {
  const text = await registry.metrics();
  return [...text.matchAll(new RegExp(`^${metric}\\{([^}]*)\\} (\\S+)$`, "gm"))].map(([, labels, value]) => ({
    ...Object.fromEntries([...labels!.matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1]!, m[2]!])),
    value: value!,
  }));
}

describe("online accuracy, replaying the held-out log as traffic", () => {
  it("the replay slice is what it says: 100 users' validation impressions, their feature rows and outcomes", () => {
    expect(new Set(impressions.map((i) => i.user_id)).size).toBe(100);
    expect(rows.length).toBe(impressions.length * 14);
    for (const imp of impressions) {
      expect(imp.label).toBe(imp.outcome_at === null ? 0 : 1);
      if (imp.outcome_at !== null) expect(imp.outcome_at - imp.at).toBeLessThanOrEqual(ATTRIBUTION_MS / 1000);
    }
  });

  it("the real ranker's online AUC matches its offline AUC on the same slice; the ratio to the manifest's is on /metrics", async () => {
    const clock = { now: 0 };
    const tracker = open(clock);
    replay(tracker, clock, "gbdt-only", (k) => gbdtScores[k]!);
    const [figures] = tracker.figures();
    expect(figures!.variant).toBe("gbdt-only");
    expect(figures!.models).toBe("ranker-gbdt@v1");
    expect(figures!.lists).toBe(sessions().length);
    expect(figures!.judgedLists).toBeGreaterThanOrEqual(150);

    // The join, recomputed here: an item is clicked when the log has a click of it by the
    // user within 30 minutes of the answer (the session's first view).
    const joined = new Uint8Array(impressions.length);
    for (const session of sessions()) {
      const servedAt = impressions[session[0]!]!.at;
      for (const k of session) {
        const { user_id, item_id } = impressions[k]!;
        joined[k] = impressions.some((c) => c.user_id === user_id && c.item_id === item_id && c.outcome_at !== null && c.outcome_at >= servedAt && c.outcome_at - servedAt <= ATTRIBUTION_MS / 1000) ? 1 : 0;
      }
    }
    expect(figures!.online.auc).toBeCloseTo(auc(Float64Array.from(gbdtScores), joined), 9);
    // Offline, each view has its own label; online, a click labels every view of the item in
    // the answer (users re-view items: half the log's events), and a click more than 30
    // minutes after the answer counts offline only. Both move the AUC a little.
    const offlineOnSlice = auc(Float64Array.from(gbdtScores), Uint8Array.from(impressions, (i) => i.label));
    expect(Math.abs(figures!.online.auc! - offlineOnSlice)).toBeLessThan(0.03);

    const offline = manifestMetrics("ranker-gbdt");
    const ratios = Object.fromEntries(figures!.ratios.map((r) => [r.metric, r]));
    expect(Object.keys(ratios).sort()).toEqual(["auc", "ctr@10", "ndcg@10"]);
    expect(ratios.auc!.offline).toBe(offline.auc);
    expect(ratios.auc!.ratio).toBeCloseTo(figures!.online.auc! / offline.auc!, 12);
    // A sample of 100 users: the served model performs like its validation figure, within sampling error.
    expect(ratios.auc!.ratio).toBeGreaterThan(0.9);
    expect(ratios.auc!.ratio).toBeLessThan(1.1);

    const exported = (await scraped("recsys_prediction_online_offline_ratio")).filter((s) => s.variant === "gbdt-only");
    const exportedAuc = exported.find((s) => s.metric === "auc" && s.model === "ranker-gbdt" && s.model_version === "v1");
    expect(Number(exportedAuc?.value)).toBeCloseTo(ratios.auc!.ratio, 9);
    const offlineExported = (await scraped("recsys_prediction_offline_metric")).find((s) => s.model === "ranker-gbdt" && s.metric === "auc");
    expect(Number(offlineExported?.value)).toBe(offline.auc);
    console.info(`replay: ${figures!.lists} answers, online ${JSON.stringify(figures!.online)}, ratios ${figures!.ratios.map((r) => `${r.metric} ${r.ratio.toFixed(3)}`).join(", ")}`);
  });

  it("a ranking that learned nothing (seeded random scores) falls far below the 95% target, beside the real one", async () => {
    const clock = { now: 0 };
    const tracker = open(clock);
    const random = seededRandom(24);
    const noise = Float64Array.from(impressions, () => random());
    replay(tracker, clock, "gbdt-only", (k) => gbdtScores[k]!);
    replay(tracker, clock, "noise", (k) => noise[k]!);
    const ratio = (variant: string) => tracker.figures().find((f) => f.variant === variant)!.ratios.find((r) => r.metric === "auc")!.ratio;
    expect(ratio("gbdt-only")).toBeGreaterThan(0.9);
    expect(ratio("noise")).toBeLessThan(0.8);
    console.info(`replay: AUC ratio ${ratio("gbdt-only").toFixed(3)} ranked by ranker-gbdt, ${ratio("noise").toFixed(3)} by noise`);
    const exported = (await scraped("recsys_prediction_online_offline_ratio")).filter((s) => s.metric === "auc");
    expect(Number(exported.find((s) => s.variant === "noise")?.value)).toBeLessThan(0.8);
  });
});

describe("joining answers with clicks", () => {
  const answer = (requestId: string, atMs: number, modelVersions: Record<string, string> = { "ranker-gbdt": "v1" }) => ({
    requestId,
    userId: "u1",
    items: [
      { itemId: "a", score: 0.9 },
      { itemId: "b", score: 0.5 },
    ],
    variant: "default",
    modelVersions,
    atMs,
  });

  it("counts a click only within the attribution window after the answer, an answer once per request id, and no model-less answer", () => {
    const clock = { now: 0 };
    const tracker = new OnlineAccuracy({ serviceVersion: "v1", minLists: 1, now: () => clock.now });
    opened.push(tracker);
    tracker.served(answer("r1", 0));
    tracker.served(answer("r1", 0));
    tracker.served(answer("popular", 0, {}));
    tracker.outcome("u1", "b", ATTRIBUTION_MS + 1);
    clock.now = ATTRIBUTION_MS + 2;
    expect(tracker.figures()).toMatchObject([{ lists: 1, judgedLists: 0 }]);

    tracker.served(answer("r2", clock.now));
    tracker.outcome("u1", "b", clock.now + 1000);
    tracker.outcome("u2", "a", clock.now + 1000);
    clock.now += ATTRIBUTION_MS + 1;
    const [figures] = tracker.figures();
    expect(figures).toMatchObject({ lists: 2, judgedLists: 1 });
    // Pooled over both lists: the one click (score 0.5) is under two unclicked 0.9s and ties one unclicked 0.5.
    expect(figures!.online.auc).toBeCloseTo(0.5 / 3, 12);
    expect(figures!.online["ndcg@10"]).toBeCloseTo(1 / Math.log2(3), 12);
    expect(figures!.online["ctr@10"]).toBe(0.5);
  });

  it("bounds the lists awaiting clicks, dropping the oldest", () => {
    const clock = { now: 0 };
    const tracker = new OnlineAccuracy({ serviceVersion: "v1", maxPending: 2, now: () => clock.now });
    opened.push(tracker);
    for (let k = 0; k < 5; k++) tracker.served(answer(`r${k}`, 0));
    expect(tracker.droppedLists).toBe(3);
  });

  it("AUC counts ties as half", () => {
    expect(auc(Float64Array.from([0.5, 0.5]), Uint8Array.from([1, 0]))).toBe(0.5);
    expect(auc(Float64Array.from([0.1, 0.9, 0.5]), Uint8Array.from([0, 1, 0]))).toBe(1);
    expect(auc(Float64Array.from([0.1, 0.9]), Uint8Array.from([0, 0]))).toBeNaN();
  });
});
