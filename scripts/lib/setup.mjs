// @ts-check
// Helpers shared by the setup commands (scripts/setup.mjs, install-k8s-tools.mjs): where the
// tools go, running commands, stamp files that make a second run quiet, and building a
// pinned Go tool from the module cache.
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
// RECSYS_TOOLS_DIR moves the install (the setup tests install into a temporary one).
export const tools = process.env.RECSYS_TOOLS_DIR ?? join(root, ".tools");
export const bin = join(tools, "bin");
export const venv = join(tools, "venv");
/** Zipkin's server, as setup.mjs installs it and scripts/observe.ts runs it. */
export const zipkinJar = join(tools, "zipkin", "zipkin-server-exec.jar");

export const say = (/** @type {string} */ msg) => console.log(`setup: ${msg}`);

/** @param {string} cmd @returns {string | undefined} */
export function onPath(cmd) {
  return spawnSync("sh", ["-c", `command -v ${cmd}`], { encoding: "utf8" }).stdout.trim() || undefined;
}

/**
 * @param {string} cmd
 * @param {string[]} args
 * @param {import("node:child_process").SpawnSyncOptionsWithStringEncoding | Omit<import("node:child_process").SpawnSyncOptions, "encoding">} [opts]
 * @returns {string}
 */
export function run(cmd, args, opts = {}) {
  const result = spawnSync(cmd, args, { encoding: "utf8", ...opts });
  if (result.status !== 0) {
    const out = `${result.stdout ?? ""}${result.stderr ?? ""}`.trim().split("\n").slice(-5).join("\n");
    throw new Error(`${cmd} ${args.join(" ")} failed:\n${out || result.error?.message}`);
  }
  return result.stdout;
}

/** A stamp records what was installed; a changed pin reinstalls. */
/** @param {string} name @param {string} value */
export function stamped(name, value) {
  const file = join(tools, `.${name}.stamp`);
  return existsSync(file) && readFileSync(file, "utf8") === value;
}

/** @param {string} name @param {string} value */
export function stamp(name, value) {
  writeFileSync(join(tools, `.${name}.stamp`), value);
}

/**
 * Downloads the pinned module and builds one of its packages from the module cache
 * into .tools/bin. (`go install pkg@version` also asks the proxy for the module's
 * version list, which some proxies refuse for modules they serve at a pinned version.)
 */
/** @param {string} name @param {string} module @param {string} pkg */
export function goBuild(name, module, pkg) {
  const spec = `${module} ${pkg}`;
  if (stamped(name, spec) && existsSync(join(bin, name))) return;
  const go = onPath("go");
  if (!go) throw new Error(`${name}: Go is not installed, so ${module} cannot be built (install Go 1.26+ and rerun npm run setup)`);
  say(`building ${name} (${module})`);
  const { Dir, Error: error } = JSON.parse(run(go, ["mod", "download", "-json", module]));
  if (error) throw new Error(`${name}: ${error}`);
  run(go, ["build", "-o", join(bin, name), pkg], { cwd: Dir, env: { ...process.env, GOFLAGS: "-mod=mod", GOWORK: "off" }, timeout: 600_000 });
  stamp(name, spec);
}
