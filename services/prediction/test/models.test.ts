import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ROOT } from "../../../scripts/lib/tools.js";
import { ModelLoadError, OnnxModel, modelVersions } from "../models.js";

const MODELS = join(ROOT, "models");
const PARITY = join(MODELS, "parity", "v1");

interface Samples {
  features: number[][];
  scores: Record<string, number[]>;
}

const samples = JSON.parse(readFileSync(join(PARITY, "samples.json"), "utf8")) as Samples;
const rankers = Object.keys(samples.scores);
const scratch = mkdtempSync(join(tmpdir(), "recsys-models-"));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

describe("ONNX model loader", () => {
  it("has parity samples for every committed ranker", () => {
    const committed = ["ranker-gbdt", "ranker-mlp", "ranker-mlp-int8"];
    expect(rankers.sort()).toEqual(committed);
    for (const name of committed) expect(modelVersions(MODELS, name)).toContain("v1");
  });

  it.each(rankers)("%s scores like Python's onnxruntime within 1e-4", async (name) => {
    const model = await OnnxModel.load(join(MODELS, name, "v1"));
    try {
      expect(model.featureCount).toBe(14);
      const rows = Float32Array.from(samples.features.flat());
      const scores = await model.score(rows, samples.features.length);
      const expected = samples.scores[name]!;
      expect(scores).toHaveLength(expected.length);
      const worst = Math.max(...expected.map((e, i) => Math.abs(scores[i]! - e)));
      expect(worst).toBeLessThan(1e-4);
    } finally {
      await model.release();
    }
  });

  it("refuses a model whose ONNX inputs disagree with its manifest, naming the model and the mismatch", async () => {
    const err = await OnnxModel.load(join(PARITY, "bad-manifest")).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ModelLoadError);
    expect(String((err as Error).message)).toMatch(/^model ranker-bad@v1: the ONNX graph disagrees with manifest.json: input "features" shape: manifest \[-1, 13\], ONNX \[.+, 14\]/);
  });

  it("refuses a model.onnx whose sha256 differs from the manifest", async () => {
    const dir = join(scratch, "ranker-mlp", "v9");
    cpSync(join(MODELS, "ranker-mlp", "v1"), dir, { recursive: true });
    const manifest = JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8"));
    writeFileSync(join(dir, "manifest.json"), JSON.stringify({ ...manifest, sha256: "0".repeat(64) }));
    await expect(OnnxModel.load(dir)).rejects.toThrow(/^model ranker-mlp@v1: model.onnx sha256 [0-9a-f]{64} does not match the manifest's 0{64}$/);
  });

  it("refuses rows of the wrong width instead of running them", async () => {
    const model = await OnnxModel.load(join(MODELS, "ranker-gbdt", "v1"));
    try {
      await expect(model.score(new Float32Array(13), 1)).rejects.toThrow(/expected 1 x 14 values, got 13/);
    } finally {
      await model.release();
    }
  });
});
