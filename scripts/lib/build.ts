// The services as JavaScript (`npm run build`, scripts/build.ts), for the mesh, the
// benchmarks and the images. `node --import tsx` transpiles every module at start (about
// 1.7 s for prediction) and keeps its loader hooks in the process; compiled output
// starts in a tenth of that, which is what a supervisor's restart waits for.
//
// esbuild compiles file for file (no bundle): every module keeps its path, so paths
// built from `import.meta.url` and the `import.meta.url === argv[1]` entry checks hold
// as in the sources. Without --outdir the output goes to dist/<hash of the sources>/:
// a changed source gives a new directory, never a half-written one under a running app.
import { createHash } from "node:crypto";
import { cpSync, existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync, symlinkSync } from "node:fs";
import { join, relative } from "node:path";
import { build } from "esbuild";
import { ROOT } from "./tools.js";

/** Compiled trees kept in dist/: enough for a mesh still running an older build. */
const KEPT_BUILDS = 4;

function sources(): string[] {
  const found: string[] = [];
  const walk = (dir: string) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) {
        if (entry.name !== "test") walk(path);
      } else if (/\.(ts|mjs)$/.test(entry.name) && !entry.name.endsWith(".test.ts") && !entry.name.endsWith(".d.ts")) {
        found.push(path);
      }
    }
  };
  walk(join(ROOT, "services"));
  walk(join(ROOT, "gen"));
  return found.sort();
}

/** Compiles services/ and gen/ into outdir, mirroring their paths. */
export async function compileServices(outdir: string): Promise<void> {
  const files = sources();
  await build({
    entryPoints: files.filter((file) => file.endsWith(".ts")),
    outdir,
    outbase: ROOT,
    format: "esm",
    platform: "node",
    target: "node20",
    sourcemap: true,
    logLevel: "warning",
  });
  // Worker scripts are JavaScript already; they load beside the module that starts them.
  for (const file of files.filter((f) => f.endsWith(".mjs"))) cpSync(file, join(outdir, relative(ROOT, file)));
}

/**
 * The compiled tree for the sources as they are now, building it when missing.
 * Returns its root: run `node <root>/services/<name>/server.js`.
 */
export async function compiledServices(): Promise<string> {
  const files = sources();
  const hash = createHash("sha256");
  // tsconfig.json steers esbuild's output too (class fields, target).
  for (const file of [...files, join(ROOT, "tsconfig.json")]) hash.update(relative(ROOT, file)).update("\0").update(readFileSync(file)).update("\0");
  const dist = join(ROOT, "dist");
  const target = join(dist, hash.digest("hex").slice(0, 16));
  if (existsSync(join(target, "services"))) return target;
  const staging = join(dist, `.staging-${process.pid}-${Date.now()}`);
  mkdirSync(staging, { recursive: true });
  await compileServices(staging);
  // Data read relative to a module (models/) resolves from the same depth as in the sources.
  symlinkSync(join("..", "..", "models"), join(staging, "models"));
  try {
    renameSync(staging, target);
  } catch (err) {
    // A concurrent build of the same sources finished first: theirs is identical.
    rmSync(staging, { recursive: true, force: true });
    if (!existsSync(join(target, "services"))) throw err;
  }
  pruneOldBuilds(dist, target);
  return target;
}

function pruneOldBuilds(dist: string, current: string): void {
  const builds = readdirSync(dist)
    .filter((name) => /^[0-9a-f]{16}$/.test(name))
    .map((name) => join(dist, name))
    .filter((path) => path !== current)
    .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs);
  for (const old of builds.slice(KEPT_BUILDS - 1)) rmSync(old, { recursive: true, force: true });
}
