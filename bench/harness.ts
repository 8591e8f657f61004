import { execFile, execFileSync } from "node:child_process";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT, tool } from "../scripts/lib/tools.js";

/** One measured scenario, as written to bench/results/latest.json. */
export interface ScenarioResult {
  name: string;
  qps: number;
  p50_ms: number;
  p95_ms: number;
  p99_ms: number;
  errors: number;
  [extra: string]: unknown;
}

/** A comparison of two scenarios measured in the same run. */
export interface Ratio {
  name: string;
  value: number;
  target: string;
  pass: boolean;
}

const TICKS_PER_SECOND = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim());

/** CPU seconds in a /proc stat file (user + system). */
function statCpuSeconds(path: string): number {
  // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
  const stat = readFileSync(path, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND;
}

/** CPU seconds a process has used so far (user + system, from /proc). */
export function cpuSeconds(pid: number): number {
  return statCpuSeconds(`/proc/${pid}/stat`);
}

/** One thread's kind and the CPU seconds it has used so far. */
export interface ThreadCpu {
  /**
   * "main" (the event loop), else the name the runtime gave the thread, cut to 15
   * characters by the kernel. Node 24 names its worker threads "WorkerThread" and V8's
   * garbage-collector and compiler helpers "V8Worker"; Node 20 names them all "node".
   */
  kind: string;
  seconds: number;
}

/** CPU seconds each live thread of a process has used so far, by thread id (from /proc). */
export function cpuSecondsByThread(pid: number): Map<number, ThreadCpu> {
  const threads = new Map<number, ThreadCpu>();
  for (const tid of readdirSync(`/proc/${pid}/task`).map(Number)) {
    try {
      const kind = tid === pid ? "main" : readFileSync(`/proc/${pid}/task/${tid}/comm`, "utf8").trim();
      threads.set(tid, { kind, seconds: statCpuSeconds(`/proc/${pid}/task/${tid}/stat`) });
    } catch {
      // The thread ended while we read it.
    }
  }
  return threads;
}

/** A bench file's default export. */
export interface BenchSuite {
  name: string;
  run(): Promise<{ scenarios: ScenarioResult[]; ratios: Ratio[] }>;
}

/** The rankers' fixed validation rows (models/parity/v1/bench_features.f32), row-major, 14 features each. */
export function rankerBenchRows(): Float32Array {
  const bytes = readFileSync(join(ROOT, "models", "parity", "v1", "bench_features.f32"));
  return new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
}

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

export function summarize(name: string, latenciesMs: number[], elapsedMs: number, errors: number, extra: Record<string, unknown> = {}): ScenarioResult {
  const sorted = [...latenciesMs].sort((a, b) => a - b);
  const round = (x: number) => Math.round(x * 1000) / 1000;
  return {
    name,
    qps: Math.round((latenciesMs.length / elapsedMs) * 1000 * 10) / 10,
    p50_ms: round(percentile(sorted, 50)),
    p95_ms: round(percentile(sorted, 95)),
    p99_ms: round(percentile(sorted, 99)),
    errors,
    count: latenciesMs.length,
    ...extra,
  };
}

/**
 * Closed-loop in-process load: `concurrency` workers call fn back to back until
 * durationMs has passed (bounded in time, stops by itself).
 */
export async function measure(
  name: string,
  fn: (i: number) => Promise<unknown>,
  options: { durationMs: number; concurrency: number; warmupMs?: number; extra?: Record<string, unknown> },
): Promise<ScenarioResult> {
  const loop = async (until: number, record: boolean, latencies: number[], counter: { i: number; errors: number }) => {
    while (performance.now() < until) {
      const started = performance.now();
      try {
        await fn(counter.i++);
        if (record) latencies.push(performance.now() - started);
      } catch {
        if (record) counter.errors++;
      }
    }
  };
  if (options.warmupMs) {
    const until = performance.now() + options.warmupMs;
    await Promise.all(Array.from({ length: options.concurrency }, () => loop(until, false, [], { i: 0, errors: 0 })));
  }
  const latencies: number[] = [];
  const counter = { i: 0, errors: 0 };
  const started = performance.now();
  const until = started + options.durationMs;
  await Promise.all(Array.from({ length: options.concurrency }, () => loop(until, true, latencies, counter)));
  return summarize(name, latencies, performance.now() - started, counter.errors, { concurrency: options.concurrency, ...options.extra });
}

export interface GhzOptions {
  name: string;
  /** host:port, loopback only. */
  address: string;
  /** Fully-qualified method, "recsys.echo.v1.EchoService.Echo". */
  call: string;
  /** The .proto declaring it, relative to proto/ ("recsys/echo/v1/echo.proto"). */
  proto: string;
  /** One request message (JSON), or use dataFile. */
  data?: unknown;
  /** A JSON file holding an array of messages, sent round-robin. */
  dataFile?: string;
  concurrency: number;
  /** How long the run lasts; with `calls`, the most it may take. */
  durationS: number;
  /** A run of exactly this many calls instead of one of durationS. */
  calls?: number;
  /** Open-loop rate; 0 means as fast as possible. */
  rps?: number;
  connections?: number;
  metadata?: Record<string, string>;
  extra?: Record<string, unknown>;
}

/** Runs ghz with the project's proto files and returns its figures. */
export async function ghz(options: GhzOptions): Promise<ScenarioResult> {
  if (!/^(127\.|localhost|\[::1\])/.test(options.address)) throw new Error(`ghz targets loopback only, not ${options.address}`);
  const skipFirst = options.rps ? Math.ceil(options.rps / 2) : 100;
  const args = [
    "--insecure",
    "--import-paths", join(ROOT, "proto"),
    "--proto", options.proto,
    "--call", options.call,
    ...(options.dataFile ? ["-D", options.dataFile] : ["-d", JSON.stringify(options.data ?? {})]),
    "-c", String(options.concurrency),
    ...(options.calls ? ["-n", String(options.calls)] : ["-z", `${options.durationS}s`]),
    "--connections", String(options.connections ?? Math.min(options.concurrency, 4)),
    "--format", "json",
    // Drop the first half second (connection set-up), not a fixed count that would
    // swallow most of a low-rate run.
    "--skipFirst", String(skipFirst),
    "--duration-stop", "wait",
    ...(options.rps ? ["--rps", String(options.rps)] : []),
    ...(options.metadata ? ["-m", JSON.stringify(options.metadata)] : []),
    options.address,
  ];
  const stdout = await new Promise<string>((resolve, reject) =>
    execFile(tool("ghz"), args, { maxBuffer: 256 * 1024 * 1024, timeout: (options.durationS + 60) * 1000 }, (err, out, errOut) =>
      err && !out ? reject(new Error(`ghz failed: ${errOut || err.message}`)) : resolve(out),
    ),
  );
  const report = JSON.parse(stdout) as {
    count: number;
    /** The whole run, in ns. */
    total: number;
    latencyDistribution: { percentage: number; latency: number }[] | null;
    statusCodeDistribution: Record<string, number>;
  };
  const at = (p: number) => (report.latencyDistribution?.find((d) => d.percentage === p)?.latency ?? 0) / 1e6;
  const errors = Object.entries(report.statusCodeDistribution ?? {})
    .filter(([code]) => code !== "OK")
    .reduce((sum, [, n]) => sum + n, 0);
  return {
    name: options.name,
    // ghz's own rps divides the calls it tallied (the skipped ones left out) by the whole
    // run, so it reads 8% low on a 6 s run; the skipped calls were sent in that time too.
    qps: Math.round(((report.count + skipFirst) / (report.total / 1e9)) * 10) / 10,
    p50_ms: at(50),
    p95_ms: at(95),
    p99_ms: at(99),
    errors,
    count: report.count,
    // Sent and answered before the tally began: served calls are count + skipped_first.
    skipped_first: skipFirst,
    concurrency: options.concurrency,
    ...(options.rps ? { offered_rps: options.rps } : {}),
    status_codes: report.statusCodeDistribution,
    ...options.extra,
  };
}

/**
 * One call for each distinct message of the data file: a warm-up after which every answer a
 * replay of the file asks for is cached, however fast the machine. ghz replays a file from its
 * start in every run, so a timed warm-up on a slow machine covers fewer messages than the
 * faster run after it sends.
 */
export async function warmUpEachMessage(options: Omit<GhzOptions, "durationS" | "calls" | "rps"> & { dataFile: string }): Promise<void> {
  const distinct = [...new Set((JSON.parse(readFileSync(options.dataFile, "utf8")) as unknown[]).map((m) => JSON.stringify(m)))];
  const dataFile = options.dataFile.replace(/\.json$/, "-each.json");
  writeFileSync(dataFile, `[${distinct.join(",")}]`);
  const result = await ghz({ ...options, dataFile, calls: distinct.length, durationS: 600 });
  // A failed warm-up call leaves its answer to be computed by the run after it.
  if (result.errors) console.warn(`${options.name}: ${result.errors} of ${distinct.length} calls failed`, result.status_codes);
}

export function ratio(name: string, value: number, target: string, pass: boolean): Ratio {
  return { name, value: Math.round(value * 1000) / 1000, target, pass };
}

/** Zipf(s) sampler over n ranks, deterministic by seed. */
export function zipfSampler(n: number, s: number, seed: number): () => number {
  const cdf = new Float64Array(n);
  let sum = 0;
  for (let k = 1; k <= n; k++) cdf[k - 1] = sum += 1 / k ** s;
  let state = seed >>> 0;
  const random = () => ((state = (Math.imul(state, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  return () => {
    const u = random() * sum;
    let lo = 0;
    let hi = n - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (cdf[mid]! < u) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  };
}
