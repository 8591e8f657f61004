// Checks the contracts the way CI does: `buf lint` passes and gen/ is exactly what
// `buf generate` produces from proto/. Used by `npm test` (test/contracts.test.ts) and
// by scripts/check-contracts.ts.
import { cpSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { ROOT, tool } from "./tools.js";

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? files(path) : [path];
  });
}

/** Problems with the contracts under root (empty when lint passes and gen/ is fresh). */
export function checkContracts(root: string = ROOT): string[] {
  const problems: string[] = [];
  const buf = (args: string[], cwd: string) =>
    spawnSync(tool("buf"), args, { cwd, encoding: "utf8", env: { ...process.env, PATH: `${join(ROOT, "node_modules", ".bin")}:${process.env.PATH}` } });

  const lint = buf(["lint"], root);
  if (lint.status !== 0) problems.push(`buf lint failed:\n${lint.stdout}${lint.stderr}`.trim());

  const scratch = mkdtempSync(join(tmpdir(), "recsys-gen-"));
  try {
    for (const entry of ["buf.yaml", "buf.gen.yaml", "proto"]) cpSync(join(root, entry), join(scratch, entry), { recursive: true });
    const generate = buf(["generate"], scratch);
    if (generate.status !== 0) {
      problems.push(`buf generate failed:\n${generate.stderr}`.trim());
      return problems;
    }
    const expected = new Map(files(join(scratch, "gen")).map((f) => [relative(scratch, f), readFileSync(f, "utf8")]));
    const actual = new Map(files(join(root, "gen")).map((f) => [relative(root, f), readFileSync(f, "utf8")]));
    for (const [path, content] of expected) {
      if (!actual.has(path)) problems.push(`${path} is missing: run npm run gen`);
      else if (actual.get(path) !== content) problems.push(`${path} is stale: run npm run gen`);
    }
    for (const path of actual.keys()) if (!expected.has(path)) problems.push(`${path} is not generated from proto/: run npm run gen`);
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
  return problems;
}
