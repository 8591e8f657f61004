// `npm start` failing to start: it says why, by name, and leaves nothing running.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { once } from "node:events";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { localListeners } from "../../envoy/topology.js";
import { portTaken, startProcess } from "../../scripts/lib/processes.js";

// Its own logs and Redis files, apart from a running `npm start`'s .run/.
const runDir = mkdtempSync(join(tmpdir(), "recsys-start-test-"));
afterAll(() => rmSync(runDir, { recursive: true, force: true }));
const start = (env: Record<string, string> = {}) => startProcess("node", ["--import", "tsx", "scripts/start.ts"], { env: { RECSYS_RUN_DIR: runDir, ...env } });

async function nothingListening(): Promise<string[]> {
  const taken: string[] = [];
  for (const { port, what } of localListeners()) if (await portTaken(port)) taken.push(`${port} ${what}`);
  return taken;
}

describe("npm start", () => {
  it("names a port it needs that is taken, and who holds it, before starting anything", async () => {
    const squatter = createServer().listen(localListeners().find((l) => l.what === "prediction-v1 sidecar ingress")!.port, "127.0.0.1");
    await once(squatter, "listening");
    try {
      const run = await start();
      expect(await run.exited).toBe(1);
      const port = (squatter.address() as { port: number }).port;
      expect(run.output()).toContain(`127.0.0.1:${port} (prediction-v1 sidecar ingress) is taken by node (pid ${process.pid})`);
      expect(run.output()).not.toContain("is up");
    } finally {
      squatter.close();
    }
    expect(await nothingListening()).toEqual([]);
  });

  it("prints the cause of a failed start from the failing process's log, and stops what it started", async () => {
    const run = await start({ ADMIN_TOKEN: "short" });
    expect(await run.exited).toBe(1);
    // Whichever reads the bad setting first fails the start: an app, or the materialiser (same config).
    expect(run.output()).toMatch(/npm start failed: .*(exited during start-up \(exit code 1, signal none\)|failed \(exit 1\)); its log \(.*\) says:/);
    expect(run.output()).toContain('ADMIN_TOKEN="short": Too small: expected string to have >=8 characters');
    expect(await nothingListening()).toEqual([]);
  });

  it("refuses a run dir a live mesh holds, since two Redis servers on one AOF corrupt it", async () => {
    const held = join(runDir, "held");
    mkdirSync(held, { recursive: true });
    writeFileSync(join(held, "mesh.pid"), String(process.pid));
    const run = await start({ RECSYS_RUN_DIR: held });
    expect(await run.exited).toBe(1);
    expect(run.output()).toContain(`another mesh (pid ${process.pid}) is running from ${held}`);
    expect(await nothingListening()).toEqual([]);
  });
});
