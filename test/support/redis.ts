import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { tool } from "../../scripts/lib/tools.js";
import { freePort, startProcess, type Started } from "../../scripts/lib/processes.js";

export interface TestRedis {
  url: string;
  port: number;
  /** Stops the server (SIGKILL when crash is true) and removes its data dir. */
  stop: (crash?: boolean) => Promise<void>;
  process: Started;
}

/**
 * A real redis-server on a free loopback port, with append-only persistence in a
 * temp dir, for one test file. Call stop() in afterAll.
 */
export async function startRedis(port?: number): Promise<TestRedis> {
  const dir = mkdtempSync(join(tmpdir(), "recsys-redis-"));
  const bound = port ?? (await freePort());
  const proc = await startProcess(
    tool("redis-server"),
    ["--port", String(bound), "--bind", "127.0.0.1", "--dir", dir, "--save", "", "--appendonly", "yes", "--protected-mode", "no"],
    { waitFor: /Ready to accept connections/ },
  );
  return {
    url: `redis://127.0.0.1:${bound}`,
    port: bound,
    process: proc,
    stop: async (crash = false) => {
      await proc.stop(crash ? "SIGKILL" : "SIGTERM", 15_000);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
