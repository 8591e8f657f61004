// `tsx scripts/start-loop.ts --runs 20 [--minutes 30]`: N consecutive `npm start`s (no new
// one after --minutes), each in a fresh
// private network namespace (needs root, unshare and ip), each stopped with SIGTERM once
// it says it is up. Reports how many came up, how long each took, why any failed, and
// any process a run left behind in its namespace.
import { spawn } from "node:child_process";
import { mkdtempSync, readdirSync, readlinkSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { ROOT } from "./lib/tools.js";

const { values } = parseArgs({ options: { runs: { type: "string", default: "20" }, minutes: { type: "string", default: "60" }, "timeout-s": { type: "string", default: "180" } } });
const runs = Number(values.runs);
const stopStartingAt = performance.now() + Number(values.minutes) * 60_000;
// One run dir for the whole loop (each start reloads the last one's Redis files, as
// consecutive npm starts do), apart from a running `npm start`'s .run/.
const runDir = mkdtempSync(join(tmpdir(), "recsys-start-loop-"));
const timeoutMs = Number(values["timeout-s"]) * 1000;

interface Run {
  up: boolean;
  seconds: number;
  exitCode: number | null;
  leftBehind: number;
  failure: string;
}

/** Processes whose network namespace is `netns` ("net:[4026532...]"). */
function processesIn(netns: string): number {
  let count = 0;
  for (const pid of readdirSync("/proc").filter((name) => /^\d+$/.test(name))) {
    try {
      if (readlinkSync(`/proc/${pid}/ns/net`) === netns) count++;
    } catch {
      // gone, or not ours to read
    }
  }
  return count;
}

async function once(): Promise<Run> {
  const started = performance.now();
  const child = spawn("unshare", ["-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", "node", "--import", "tsx", "scripts/start.ts"], {
    cwd: ROOT,
    env: { ...process.env, RECSYS_IN_NETNS: "1", RECSYS_RUN_DIR: runDir },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  let netns = "";
  const up = await new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), timeoutMs);
    const onData = (data: Buffer) => {
      output += data;
      if (!netns && child.pid) netns = readlinkSync(`/proc/${child.pid}/ns/net`);
      if (output.includes("recsys-mesh is up")) {
        clearTimeout(timer);
        resolve(true);
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.on("exit", () => {
      clearTimeout(timer);
      resolve(false);
    });
  });
  const seconds = (performance.now() - started) / 1000;
  if (child.exitCode === null) child.kill("SIGTERM");
  const exitCode = child.exitCode ?? (await new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code))));
  // Children exit on their own schedule after their parent's SIGTERM; give them a moment.
  let leftBehind = netns ? processesIn(netns) : 0;
  for (let i = 0; i < 20 && leftBehind > 0; i++) {
    await new Promise((r) => setTimeout(r, 250));
    leftBehind = processesIn(netns);
  }
  const failure = up ? "" : (/npm start failed: [\s\S]*/.exec(output)?.[0] ?? output.slice(-2000)).trim();
  return { up, seconds, exitCode, leftBehind, failure };
}

const results: Run[] = [];
for (let i = 1; i <= runs && performance.now() < stopStartingAt; i++) {
  const run = await once();
  results.push(run);
  console.log(`run ${i}/${runs}: ${run.up ? "up" : "FAILED"} in ${run.seconds.toFixed(1)} s, exit ${run.exitCode}${run.leftBehind ? `, ${run.leftBehind} processes left behind` : ""}${run.failure ? `\n${run.failure}` : ""}`);
}
rmSync(runDir, { recursive: true, force: true });
const upCount = results.filter((r) => r.up).length;
const times = results.filter((r) => r.up).map((r) => r.seconds).sort((a, b) => a - b);
console.log(
  `\n${upCount}/${results.length} start-ups came up${results.length < runs ? ` (${runs} asked; --minutes ran out)` : ""}` +
    (times.length ? `; time to up: min ${times[0]!.toFixed(1)} s, median ${times[Math.floor(times.length / 2)]!.toFixed(1)} s, max ${times.at(-1)!.toFixed(1)} s` : "") +
    `; ${results.filter((r) => r.exitCode !== 0 && r.up).length} did not stop cleanly; ${results.reduce((s, r) => s + r.leftBehind, 0)} processes left behind`,
);
process.exit(upCount === results.length ? 0 : 1);
