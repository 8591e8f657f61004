import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { stringify } from "yaml";
import { runCommand, startProcess, type Started } from "../../scripts/lib/processes.js";
import { tool } from "../../scripts/lib/tools.js";

export interface TestEnvoy {
  /** http://127.0.0.1:<admin port> */
  admin: string;
  configPath: string;
  process: Started;
  stop: () => Promise<void>;
}

/** Writes a bootstrap (an Envoy v3 config object) as YAML into dir/<name>.yaml. */
export function writeEnvoyConfig(dir: string, name: string, bootstrap: object): string {
  const path = join(dir, `${name}.yaml`);
  writeFileSync(path, stringify(bootstrap));
  return path;
}

/** `envoy --mode validate`: the exit code and what Envoy said. */
export async function validateEnvoyConfig(path: string): Promise<{ code: number; output: string }> {
  const { code, stdout, stderr } = await runCommand(tool("envoy"), ["--mode", "validate", "--disable-hot-restart", "-l", "error", "-c", path], 60_000);
  return { code, output: stdout + stderr };
}

/**
 * A real Envoy on a written config (one worker thread), resolved once its admin
 * /ready says LIVE, i.e. every listener is up and every static secret loaded.
 * ENVOY_TEST_LOG_LEVEL=debug shows why a handshake or a filter refused something.
 */
export async function startEnvoy(configPath: string, adminPort: number, timeoutMs = 60_000): Promise<TestEnvoy> {
  const proc = await startProcess(tool("envoy"), ["-c", configPath, "--disable-hot-restart", "-l", process.env.ENVOY_TEST_LOG_LEVEL ?? "warn", "--concurrency", "1"]);
  const admin = `http://127.0.0.1:${adminPort}`;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (proc.child.exitCode !== null) throw new Error(`envoy ${configPath} exited (${proc.child.exitCode}):\n${proc.output()}`);
    const live = await fetch(`${admin}/ready`, { signal: AbortSignal.timeout(2000) }).then((r) => r.text(), () => "");
    if (live.trim() === "LIVE") break;
    if (Date.now() > deadline) {
      await proc.stop("SIGKILL");
      throw new Error(`envoy ${configPath} not LIVE after ${timeoutMs} ms:\n${proc.output()}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return { admin, configPath, process: proc, stop: async () => void (await proc.stop()) };
}
