import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { runCommand } from "../scripts/processes.js";
import { ROOT } from "../scripts/tools.js";

const out = mkdtempSync(join(tmpdir(), "recsys-train-"));
afterAll(() => rmSync(out, { recursive: true, force: true }));

function files(root: string, dir = root): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? files(root, path) : [relative(root, path)];
  });
}

describe("npm run train", () => {
  it("regenerates the committed artifacts byte for byte, and every model beats the popularity baseline", async () => {
    const run = await runCommand(join(ROOT, ".tools", "venv", "bin", "python"), ["training/train.py", "--out", out], 600_000);
    expect(run.code, run.stderr).toBe(0);
    const committed = files(join(ROOT, "models")).sort();
    expect(files(out).sort()).toEqual(committed);
    for (const file of committed) {
      expect(readFileSync(join(out, file)).equals(readFileSync(join(ROOT, "models", file))), file).toBe(true);
    }
    for (const model of ["ranker-gbdt", "ranker-mlp", "ranker-mlp-int8"]) {
      const { metrics } = JSON.parse(readFileSync(join(ROOT, "models", model, "v1", "manifest.json"), "utf8"));
      expect(metrics["ndcg@10"], model).toBeGreaterThan(metrics.baseline["ndcg@10"]);
    }
    const embeddings = JSON.parse(readFileSync(join(ROOT, "models", "embeddings", "v1", "manifest.json"), "utf8"));
    expect(embeddings.metrics["recall@100"]).toBeGreaterThan(embeddings.metrics.baseline["recall@100"]);
  }, 600_000);
});
