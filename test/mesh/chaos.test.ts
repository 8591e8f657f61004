// Chaos, short form of `npm run chaos`: kill -9 under load through the edge, then what
// callers saw. The supervisor first, on its own, with tiny processes.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FallbackLevel } from "../../gen/recsys/prediction/v1/prediction_pb.js";
import { faults, levelName, oneRungBelow, runFault, waitWhole, type Fault, type FaultResult } from "../../scripts/lib/chaos.js";
import { stat } from "../../scripts/lib/envoy-admin.js";
import { startMesh, type Mesh } from "../../scripts/lib/mesh.js";
import { Supervised } from "../../scripts/lib/processes.js";
import { predictAnswers } from "../support/predict-answers.js";

describe("supervisor", () => {
  const dir = mkdtempSync(join(tmpdir(), "recsys-supervisor-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const policy = { initialDelayMs: 20, maxDelayMs: 80, maxRestarts: 3, stableAfterMs: 60_000 };

  it("restarts a crashing process with growing delays, then gives up loudly with the cause from its log", async () => {
    const lines: string[] = [];
    const gaveUp = new Promise<void>((resolve) => {
      const crashing = new Supervised({
        name: "crasher",
        command: "node",
        args: ["-e", "console.error('BadConfigError: PORT must be a number'); process.exit(3)"],
        logFile: join(dir, "crasher.log"),
        policy,
        log: (line) => {
          lines.push(line);
          if (line.includes("giving up")) resolve();
        },
      });
      crashing.start().supervise();
    });
    await gaveUp;
    expect(lines.slice(0, 3)).toEqual([
      "crasher exited (exit code 3, signal none); restarting (restart 1 of at most 3 in a row)",
      "crasher exited (exit code 3, signal none); restarting in 0.02 s (restart 2 of at most 3 in a row)",
      "crasher exited (exit code 3, signal none); restarting in 0.04 s (restart 3 of at most 3 in a row)",
    ]);
    expect(lines[3]).toContain("crasher is crash-looping (4 exits in a row, last: exit code 3, signal none); giving up");
    expect(lines[3]).toContain("BadConfigError: PORT must be a number");
    expect(lines).toHaveLength(4);
  });

  it("does not restart a process stopped on purpose", async () => {
    const lines: string[] = [];
    const sleeper = new Supervised({ name: "sleeper", command: "node", args: ["-e", "setInterval(() => {}, 1000)"], logFile: join(dir, "sleeper.log"), policy, log: (l) => lines.push(l) });
    sleeper.start().supervise();
    await sleeper.stop("SIGKILL");
    expect(sleeper.running).toBe(false);
    expect(sleeper.restarts).toBe(0);
    expect(lines).toEqual([]);
  });
});

describe("kill -9 under load through the edge", () => {
  let mesh: Mesh;
  const runDir = mkdtempSync(join(tmpdir(), "recsys-chaos-test-"));
  const supervisorLines: string[] = [];
  const short = { concurrency: 4, rps: 40, durationS: 8, killAfterS: 2, samplers: 2, users: 500, settleS: 5, dataDir: runDir };

  beforeAll(async () => {
    mesh = await startMesh({ runDir, env: { LOG_LEVEL: "warn" }, log: (line) => supervisorLines.push(line) });
  });
  afterAll(async () => {
    await mesh?.stop();
    rmSync(runDir, { recursive: true, force: true });
  });

  const fault = (name: string): Fault => faults.find((f) => f.name === name)!;
  const rank = (name: string) => [FallbackLevel.PRIMARY, FallbackLevel.SIMPLIFIED, FallbackLevel.POPULAR, FallbackLevel.STATIC].map(levelName).indexOf(name);

  const answers = (version: string) => predictAnswers(mesh, version);

  /** Kills the fault's process under load, then checks what the edge guarantees and that the supervisor brought it back. */
  async function killUnderLoad(name: string): Promise<FaultResult> {
    const f = fault(name);
    const result = await runFault(mesh, f, short);
    console.log(`${name}: edge ${JSON.stringify(result.edgeCodes)}, sampled ${JSON.stringify(result.sampled)}, by rung ${JSON.stringify(result.answersByRung)}, PRIMARY again ${result.primaryAgainMs} ms, back ${result.backMs} ms`);
    expect(Object.values(result.sampled).reduce((a, b) => a + b, 0)).toBeGreaterThan(0);
    expect(result.edgeCodes.Unavailable ?? 0).toBe(0);
    // Every call made after the kill answers. A call whose answer was half sent when the
    // process died can fail ("missing status"): once its headers reached the caller no
    // proxy may retry it. Those are counted in the closing table, not hidden.
    expect(result.worst, `sampled after the kill: ${JSON.stringify(result.sampled)}`).not.toBe("error");
    expect(rank(result.worst)).toBeLessThanOrEqual(rank(levelName(oneRungBelow(f.requires))));
    expect(supervisorLines.some((line) => line.startsWith(`${f.instance} app exited (exit code none, signal SIGKILL); restarting`))).toBe(true);
    return result;
  }

  // The 10 s restart target is a figure of `npm run chaos` (bench/results/chaos.md), not a
  // verdict here: a loaded machine restarts slower. Here: the supervisor restarted it and
  // it serves again.
  it.each(["feature app", "retrieval app"])("%s: no UNAVAILABLE at the edge, answers at most one rung below what the fault allows, restarted", async (name) => {
    try {
      const { backMs } = await killUnderLoad(name);
      expect(backMs).not.toBeNull();
    } finally {
      await waitWhole(mesh);
    }
  }, 150_000);

  it("prediction-v1 app: no UNAVAILABLE at the edge, v2 answers while v1 is down, at most one rung below what the fault allows, restarted", async () => {
    // The edge sends every call to v1 (weights 100/0, no x-canary here): v2 answers only by failover.
    const v2Before = await answers("v2");
    try {
      const { backMs } = await killUnderLoad("prediction-v1 app");
      expect(await answers("v2")).toBeGreaterThan(v2Before);
      expect(backMs).not.toBeNull();
    } finally {
      await waitWhole(mesh);
    }
  }, 150_000);

  it("30% aborts on retrieval's sidecar: no errors at the edge, under 2% STATIC, retrieval not ejected into no healthy upstream", async () => {
    const result = await runFault(mesh, fault("30% aborts on retrieval's sidecar"), short);
    console.log(`30% aborts: edge ${JSON.stringify(result.edgeCodes)}, sampled ${JSON.stringify(result.sampled)}, by rung ${JSON.stringify(result.answersByRung)}`);
    const total = Object.values(result.sampled).reduce((a, b) => a + b, 0);
    expect(total).toBeGreaterThan(0);
    expect(Object.keys(result.edgeCodes)).toEqual(["OK"]);
    expect(result.worst, `sampled: ${JSON.stringify(result.sampled)}`).not.toBe("error");
    // The fault was real (retrieval's sidecar aborted calls; retries hide most of them) ...
    const retrieval = mesh.instances.find((i) => i.id === "retrieval")!;
    expect(await stat(`http://127.0.0.1:${retrieval.sidecarAdminPort}`, "http.ingress_retrieval.fault.aborts_injected")).toBeGreaterThan(0);
    // ... and almost no answer fell through to the static list.
    expect((result.sampled.STATIC ?? 0) / total).toBeLessThan(0.02);
  }, 150_000);
});
