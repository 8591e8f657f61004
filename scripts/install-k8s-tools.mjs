#!/usr/bin/env node
// @ts-check
// Installs the tools the Kubernetes and observability tests need, pinned, into .tools/:
//   kustomize            built from the Go module cache, like setup.mjs builds ghz
//   promtool             extracted from Debian's `prometheus` package (no service installed)
//   kubernetes-validate  from PyPI into .tools/venv: strict JSON schemas of the Kubernetes API
// Idempotent: a stamp in .tools/ records each installed pin, so a second run is quiet.
// Run it alone (`node scripts/install-k8s-tools.mjs`) or from setup.mjs, which calls
// installK8sTools() and reports the problems it returns.
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, copyFileSync, rmSync, chmodSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { bin, goBuild, onPath, run, say, stamp, stamped, tools, venv } from "./lib/setup.mjs";

export const K8S_PINS = {
  // v5.8.3 needs Go 1.27; v5.8.2 builds with Go 1.26.
  kustomize: /** @type {[string, string]} */ (["sigs.k8s.io/kustomize/kustomize/v5@v5.8.2", "."]),
  // Debian 12 ships Prometheus 2.42; its promtool is a static binary. Building promtool
  // from the Go module cache was tried and fails: the proxy refuses some pseudo-versions
  // that prometheus' go.mod requires.
  promtool: { debianPackage: "prometheus", version: "2.42." },
  // With its dependencies pinned (typing_extensions and packaging are pinned by
  // training/requirements.txt, which shares the venv).
  kubernetesValidate: [
    "kubernetes-validate==1.37.0",
    "jsonschema==4.26.0",
    "jsonschema-specifications==2025.9.1",
    "referencing==0.37.0",
    "rpds-py==2026.9.1",
    "attrs==26.1.0",
    "PyYAML==6.0.3",
    "importlib-resources==7.1.0",
  ],
};

function ensureKustomize() {
  const [module, pkg] = K8S_PINS.kustomize;
  goBuild("kustomize", module, pkg);
}

/**
 * Downloads the .deb with `apt-get download` (no root needed, nothing installed, no
 * Prometheus service started) and keeps only /usr/bin/promtool.
 */
function ensurePromtool() {
  const { debianPackage, version } = K8S_PINS.promtool;
  const target = join(bin, "promtool");
  if (stamped("promtool", `${debianPackage} ${version}`) && existsSync(target)) return;
  if (!onPath("apt-get") || !onPath("dpkg-deb")) {
    throw new Error(`promtool: no apt-get here; install Prometheus ${version}x's promtool yourself (macOS: brew install prometheus) and copy it to .tools/bin/promtool`);
  }
  say(`installing promtool from Debian's ${debianPackage} package`);
  const work = mkdtempSync(join(tmpdir(), "promtool-"));
  try {
    const candidateOf = () => run("apt-cache", ["policy", debianPackage]).match(/Candidate:\s*(\S+)/)?.[1];
    let candidate = candidateOf();
    if ((!candidate || candidate === "(none)") && process.getuid?.() === 0) {
      run("apt-get", ["update", "-qq"]);
      candidate = candidateOf();
    }
    if (!candidate || candidate === "(none)") throw new Error(`promtool: apt has no ${debianPackage} package (run apt-get update first)`);
    if (!candidate.startsWith(version)) throw new Error(`promtool: apt offers ${debianPackage} ${candidate}, the pin is ${version}x`);
    run("apt-get", ["download", `${debianPackage}=${candidate}`], { cwd: work });
    const deb = readdirSync(work).find((f) => f.endsWith(".deb"));
    if (!deb) throw new Error(`promtool: apt-get download left no .deb of ${debianPackage}`);
    run("dpkg-deb", ["-x", join(work, deb), join(work, "x")]);
    copyFileSync(join(work, "x", "usr", "bin", "promtool"), target);
    chmodSync(target, 0o755);
    say(run(target, ["--version"]).split("\n")[0] ?? "");
    stamp("promtool", `${debianPackage} ${version}`);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

function ensureKubernetesValidate() {
  const pins = K8S_PINS.kubernetesValidate;
  if (stamped("kubernetes-validate", pins.join(" ")) && existsSync(join(venv, "bin", "kubernetes-validate"))) return;
  if (!existsSync(join(venv, "bin", "python"))) {
    const python = onPath("python3");
    if (!python) throw new Error("kubernetes-validate: python3 not found (Debian: apt-get install python3 python3-venv)");
    run(python, ["-m", "venv", venv]);
  }
  say(`installing ${pins[0]} from PyPI into .tools/venv`);
  run(join(venv, "bin", "pip"), ["install", "--disable-pip-version-check", "-q", ...pins]);
  stamp("kubernetes-validate", pins.join(" "));
}

/** Installs what is missing; returns one message per tool that could not be installed. */
export function installK8sTools() {
  mkdirSync(bin, { recursive: true });
  /** @type {string[]} */
  const problems = [];
  for (const step of [ensureKustomize, ensurePromtool, ensureKubernetesValidate]) {
    try {
      step();
    } catch (err) {
      problems.push(err instanceof Error ? err.message : String(err));
    }
  }
  return problems;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const problems = installK8sTools();
  for (const p of problems) console.error(`setup: ERROR: ${p}`);
  process.exit(problems.length ? 1 : 0);
}
