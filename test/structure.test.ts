// Each service owns its folder: production code under services/<name>/ imports only
// its own folder, the kit (services/kit/), gen/ and packages, plus the few library
// modules another service exports on purpose (LIBRARY_MODULES). Nothing under
// services/ imports scripts/, bench/ or test/. TypeScript's own pre-processor finds
// the imports (static, `export ... from`, dynamic import(), require), so a comment
// or a string that merely looks like an import does not count.
import { readdirSync, readFileSync } from "node:fs";
import { join, posix, relative, sep } from "node:path";
import ts from "typescript";
import { describe, expect, it } from "vitest";

const ROOT = join(import.meta.dirname, "..");

/** Modules a service publishes for other services to import, by path from the repository root, without extension. */
const LIBRARY_MODULES = new Set([
  // The in-process assigner (and its config shape): prediction assigns variants on the experiment service's cached definitions.
  "services/experiment/assigner",
]);
const SHARED = "kit";
const OUT_OF_BOUNDS = ["scripts", "bench", "test"];

const withoutExtension = (path: string) => path.replace(/\.(ts|mts|js|mjs)$/, "");

/** The import crossings of one file's text, as "file:line: what", its path from the repository root in posix form. */
export function crossings(file: string, text: string): string[] {
  const own = file.split("/")[1];
  const found: string[] = [];
  for (const imported of ts.preProcessFile(text, true, true).importedFiles) {
    if (!imported.fileName.startsWith(".")) continue; // a package, node: builtin
    const target = withoutExtension(posix.normalize(posix.join(posix.dirname(file), imported.fileName)));
    const [top, service] = target.split("/");
    const line = text.slice(0, imported.pos).split("\n").length;
    const where = `${file}:${line}: imports ${imported.fileName}`;
    if (top !== undefined && OUT_OF_BOUNDS.includes(top)) found.push(`${where} (services/ never imports ${top}/)`);
    else if (top === "services" && service !== own && service !== SHARED && !LIBRARY_MODULES.has(target)) {
      found.push(`${where} (another service's folder; only services/kit/ and ${[...LIBRARY_MODULES].join(", ")} are shared)`);
    }
  }
  return found;
}

/** Production sources under services/: .ts and .mjs, not tests or test helpers. */
function productionSources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return entry.name === "test" ? [] : productionSources(path);
    return /\.(ts|mjs)$/.test(entry.name) && !/\.test\.ts$/.test(entry.name) ? [path] : [];
  });
}

describe("service boundaries", () => {
  it("the check sees every kind of import that crosses, and nothing else", () => {
    const planted = [
      'import { readCatalog } from "../retrieval/artifacts.js";',
      'export { IndexStore } from "../retrieval/index-store.js";',
      'import type { ExperimentDeps } from "../experiment/handlers.js";',
      'const late = await import("../feature/store.js");',
      'import { ROOT } from "../../scripts/lib/tools.js";',
      'import "../../test/support/redis.js";',
      '// import { nothing } from "../feature/store.js"; (a comment is no import)',
      'import { createAssigner } from "../experiment/assigner.js";',
      'import { createRedis } from "../kit/redis.js";',
      'import { PredictionService } from "../../gen/recsys/prediction/v1/prediction_pb.js";',
      'import { FeatureReader } from "./features.js";',
      'import type { Predictor } from "../prediction/predictor.js";',
    ].join("\n");
    expect(crossings("services/prediction/planted.ts", planted).map((c) => c.split(" (")[0])).toEqual([
      "services/prediction/planted.ts:1: imports ../retrieval/artifacts.js",
      "services/prediction/planted.ts:2: imports ../retrieval/index-store.js",
      "services/prediction/planted.ts:3: imports ../experiment/handlers.js",
      "services/prediction/planted.ts:4: imports ../feature/store.js",
      "services/prediction/planted.ts:5: imports ../../scripts/lib/tools.js",
      "services/prediction/planted.ts:6: imports ../../test/support/redis.js",
    ]);
  });

  it("no production import under services/ crosses into another service or into scripts/, bench/, test/", () => {
    const sources = productionSources(join(ROOT, "services"));
    expect(sources.length).toBeGreaterThan(50);
    const found = sources.flatMap((path) => crossings(relative(ROOT, path).split(sep).join("/"), readFileSync(path, "utf8")));
    expect(found).toEqual([]);
  });

  it("every declared library module exists", () => {
    for (const module of LIBRARY_MODULES) expect(() => readFileSync(join(ROOT, `${module}.ts`)), module).not.toThrow();
  });
});
