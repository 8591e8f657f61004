import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ROOT } from "../../../scripts/lib/tools.js";
import { ModelLoadError } from "../models.js";
import { WorkerModel } from "../inference.js";

const samples = JSON.parse(readFileSync(join(ROOT, "models", "parity", "v1", "samples.json"), "utf8")) as { features: number[][]; scores: Record<string, number[]> };

describe("WorkerModel: a verified model in an inference worker thread", () => {
  it("scores like Python's onnxruntime, reports its run time, and refuses calls once released", async () => {
    const model = await WorkerModel.load(join(ROOT, "models", "ranker-gbdt", "v1"), 1);
    const rows = Float32Array.from(samples.features.flat());
    const [a, b] = await Promise.all([model.score(rows, samples.features.length), model.score(rows.subarray(0, 14), 1)]);
    expect(Math.max(...samples.scores["ranker-gbdt"]!.map((e, i) => Math.abs(a.scores[i]! - e)))).toBeLessThan(1e-4);
    expect(b.scores[0]).toBeCloseTo(a.scores[0]!, 6);
    expect(a.runMs).toBeGreaterThan(0);
    await expect(model.score(new Float32Array(13), 1)).rejects.toThrow(/expected 1 x 14 values, got 13/);
    await model.release();
    await expect(model.score(rows, samples.features.length)).rejects.toThrow(/released/);
  });

  it("refuses a model whose graph disagrees with its manifest", async () => {
    const err = await WorkerModel.load(join(ROOT, "models", "parity", "v1", "bad-manifest"), 1).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ModelLoadError);
    expect((err as Error).message).toMatch(/^model ranker-bad@v1: the ONNX graph disagrees with manifest.json: input "features" shape/);
  });
});
