// The canary's quality gate on the whole mesh: prediction-v2 runs the same build with a
// models directory whose rankers score at random (built here from the real models by
// test/support/shuffled_rankers.py; nothing in the service knows). Every call succeeds
// and is fast, so only the rankings tell: the shadow pairs (the same request to v1 and
// v2, cache bypassed) overlap far too little, and the canary refuses before any shift.
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROOT } from "../../scripts/lib/tools.js";
import { startCanaryMesh, type CanaryMesh } from "../support/canary-mesh.js";

let canary: CanaryMesh;
const modelsDir = join(mkdtempSync(join(tmpdir(), "recsys-shuffled-models-")), "models");

beforeAll(async () => {
  const built = spawnSync(join(ROOT, ".tools", "venv", "bin", "python"), [join(ROOT, "test", "support", "shuffled_rankers.py"), join(ROOT, "models"), modelsDir], { encoding: "utf8" });
  if (built.status !== 0) throw new Error(`shuffled_rankers.py failed: ${built.stderr}`);
  canary = await startCanaryMesh({ instanceEnv: { "prediction-v2": { MODELS_DIR: modelsDir } } });
});
afterAll(async () => {
  await canary?.stop();
  rmSync(join(modelsDir, ".."), { recursive: true, force: true });
});

describe("canary quality gate", () => {
  it("refuses a v2 whose rankers score at random before it takes any traffic", async () => {
    const { report, callers } = await canary.canary();
    expect(report.outcome, report.reason).toBe("refused");
    expect(report.steps).toHaveLength(1);
    const gate = report.steps[0]!;
    expect(gate.weight).toBe(0);
    expect(gate.reason).toMatch(/rankings differ|overlap/);
    // v2 answered its shadow calls from its primary rung, without errors: only the ranking differs.
    expect(gate.figures.shadow.pairs).toBeGreaterThanOrEqual(report.gates.minPairs);
    expect(gate.figures.shadow.overlap!.value, JSON.stringify(gate.figures.shadow)).toBeLessThan(report.gates.minOverlap);
    expect(gate.figures.edge!.errors + gate.figures.edge!.retries).toBe(0);
    // No caller's call went to v2.
    expect(callers.answersByVersion.v2 ?? 0).toBe(0);
    expect(callers.failures).toBe(0);
  });
});
