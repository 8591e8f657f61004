import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ROOT } from "../../../scripts/lib/tools.js";
import { ModelLoadError, OnnxModel, readModelFile } from "../models.js";

const MODELS = join(ROOT, "models");
const scratch = mkdtempSync(join(tmpdir(), "recsys-reference-"));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

/** A copy of ranker-gbdt v1 whose reference.json `edit` rewrote (undefined: no reference.json). */
function withReference(version: string, edit: ((reference: any) => unknown) | undefined): string {
  const dir = join(scratch, "ranker-gbdt", version);
  cpSync(join(MODELS, "ranker-gbdt", "v1"), dir, { recursive: true });
  const path = join(dir, "reference.json");
  if (edit) writeFileSync(path, JSON.stringify(edit(JSON.parse(readFileSync(path, "utf8")))));
  else rmSync(path);
  return dir;
}

describe("a model's feature reference (reference.json)", () => {
  it("is read with the model and handed out by the loader, column for column", async () => {
    const model = await OnnxModel.load(join(MODELS, "ranker-mlp", "v1"));
    try {
      expect(model.reference?.features.map((f) => f.name)).toEqual(model.manifest.features);
      for (const feature of model.reference!.features) {
        expect(feature.proportions).toHaveLength(feature.edges.length + 1);
        expect(feature.missingRate).toBe(0);
      }
    } finally {
      await model.release();
    }
  });

  it("is optional: a model without one loads, with no reference", () => {
    expect(readModelFile(withReference("v2", undefined)).reference).toBeUndefined();
  });

  it.each([
    ["names other features", (r: any) => ({ ...r, features: r.features.slice(1) }), /reference.json describes features \[user_ctr, .*\], the manifest lists \[user_log_events, /],
    ["has edges out of order", (r: any) => ({ ...r, features: r.features.map((f: any, k: number) => (k === 2 ? { ...f, edges: [...f.edges].reverse() } : f)) }), /item_log_popularity: edges must be finite and increasing/],
    ["has shares that do not sum to 1", (r: any) => ({ ...r, features: r.features.map((f: any, k: number) => (k === 0 ? { ...f, proportions: f.proportions.map((p: number) => p / 2) } : f)) }), /user_log_events: proportions sum to 0\.5/],
    ["has a proportion too few", (r: any) => ({ ...r, features: r.features.map((f: any, k: number) => (k === 1 ? { ...f, proportions: f.proportions.slice(1) } : f)) }), /user_ctr: \d+ edges need \d+ proportions/],
    ["misses the missing rate", (r: any) => ({ ...r, features: r.features.map(({ missing_rate: _, ...f }: any) => f) }), /invalid reference.json: features.0.missing_rate/],
  ])("refuses one that %s, naming the model and the problem", (_what, edit, message) => {
    const dir = withReference(`v-${_what.replace(/\W+/g, "-")}`, edit);
    expect(() => readModelFile(dir)).toThrow(ModelLoadError);
    expect(() => readModelFile(dir)).toThrow(message);
    expect(() => readModelFile(dir)).toThrow(/^model ranker-gbdt@v1: /);
  });
});
