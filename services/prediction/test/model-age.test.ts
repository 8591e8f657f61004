import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { ROOT } from "../../../scripts/lib/tools.js";
import { registry } from "../../kit/index.js";
import { readModelFile } from "../models.js";
import { ModelAges, agedModels, manifestCutoffMs, type AgedSet } from "../model-age.js";

const MODELS = join(ROOT, "models");
const DAY_S = 86_400;

/** The committed models as a model set holds them. */
function committedSet(): AgedSet {
  const rankers = new Map(
    ["ranker-gbdt", "ranker-mlp"].map((name) => {
      const file = readModelFile(join(MODELS, name, "v1"));
      return [name, { name, version: "v1", model: { manifest: file.manifest } }];
    }),
  );
  return { rankers, embeddings: { dir: join(MODELS, "embeddings", "v1") }, versions: { "ranker-gbdt": "v1", "ranker-mlp": "v1", embeddings: "v1" } };
}

/** Samples of one gauge from the registry's Prometheus text, keyed "model@model_version". */
async function scraped(metric: string): Promise<Map<string, number>> {
  const text = await registry.metrics();
  const found = new Map<string, number>();
  for (const [, labels, value] of text.matchAll(new RegExp(`^${metric}\\{([^}]*)\\} (\\S+)$`, "gm"))) {
    const l = Object.fromEntries([...labels!.matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1], m[2]]));
    found.set(`${l.model}@${l.model_version}`, Number(value));
  }
  return found;
}

const opened: ModelAges[] = [];
afterEach(() => {
  for (const ages of opened.splice(0)) ages.close();
});

function open(maxAgeSeconds: number, clock: { now: number }): ModelAges {
  const ages = new ModelAges({ serviceVersion: "v1", maxAgeSeconds, now: () => clock.now });
  opened.push(ages);
  return ages;
}

describe("model age and time since load", () => {
  const cutoff = Date.parse("2025-03-30T23:58:31Z");

  it("reads the training cut-off of every committed model: the rankers' and the embeddings' manifests", () => {
    const models = agedModels(committedSet());
    expect(models.map((m) => [m.name, m.version, m.cutoffMs])).toEqual([
      ["ranker-gbdt", "v1", cutoff],
      ["ranker-mlp", "v1", cutoff],
      ["embeddings", "v1", cutoff],
    ]);
  });

  it("exports age since the cut-off, seconds since load and the configured maximum, per model version", async () => {
    const clock = { now: cutoff + 10 * DAY_S * 1000 };
    const ages = open(7 * DAY_S, clock);
    ages.loaded(agedModels(committedSet()));
    clock.now += 90_000;
    const age = await scraped("recsys_prediction_model_age_seconds");
    expect(Object.fromEntries(age)).toEqual({ "ranker-gbdt@v1": 10 * DAY_S + 90, "ranker-mlp@v1": 10 * DAY_S + 90, "embeddings@v1": 10 * DAY_S + 90 });
    expect(Object.fromEntries(await scraped("recsys_prediction_model_since_load_seconds"))).toEqual({ "ranker-gbdt@v1": 90, "ranker-mlp@v1": 90, "embeddings@v1": 90 });
    expect([...(await scraped("recsys_prediction_model_max_age_seconds")).values()]).toEqual([7 * DAY_S, 7 * DAY_S, 7 * DAY_S]);
  });

  it("a swap reports the new set only, loaded now", async () => {
    const clock = { now: cutoff + DAY_S * 1000 };
    const ages = open(0, clock);
    ages.loaded(agedModels(committedSet()));
    clock.now += 3_600_000;
    ages.loaded([{ name: "ranker-gbdt", version: "v2", cutoffMs: cutoff + DAY_S * 1000 }]);
    clock.now += 5_000;
    expect(Object.fromEntries(await scraped("recsys_prediction_model_since_load_seconds"))).toEqual({ "ranker-gbdt@v2": 5 });
    expect(Object.fromEntries(await scraped("recsys_prediction_model_age_seconds"))).toEqual({ "ranker-gbdt@v2": 3605 });
    // No maximum configured: no series, so the alert has nothing to compare with.
    expect((await scraped("recsys_prediction_model_max_age_seconds")).size).toBe(0);
  });

  it("a manifest without a readable cut-off gets no age, still a time since load", async () => {
    expect(manifestCutoffMs({})).toBeUndefined();
    expect(manifestCutoffMs({ created_at: "yesterday" })).toBeUndefined();
    const clock = { now: 1_000_000 };
    const ages = open(DAY_S, clock);
    ages.loaded([{ name: "ranker-x", version: "v1", cutoffMs: manifestCutoffMs({ created_at: 17 }) }]);
    expect((await scraped("recsys_prediction_model_age_seconds")).size).toBe(0);
    expect(Object.fromEntries(await scraped("recsys_prediction_model_since_load_seconds"))).toEqual({ "ranker-x@v1": 0 });
  });
});
