import { spawn, execFile, type ChildProcess } from "node:child_process";
import { closeSync, existsSync, fstatSync, openSync, readFileSync, readSync, statSync } from "node:fs";
import { createServer } from "node:net";
import { once } from "node:events";
import { basename } from "node:path";
import { ROOT } from "./tools.js";

/** A port the OS says is free now. */
export async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as { port: number };
  server.close();
  await once(server, "close");
  return port;
}

export interface Started {
  child: ChildProcess;
  output: () => string;
  /** Resolves with the exit code. */
  exited: Promise<number | null>;
  /** Sends signal (SIGTERM by default) and resolves with the exit code; SIGKILL follows after killAfterMs when given. */
  stop: (signal?: NodeJS.Signals, killAfterMs?: number) => Promise<number | null>;
}

/** Starts a child process; waitFor resolves once its output matches. */
export async function startProcess(
  command: string,
  args: string[],
  options: { env?: Record<string, string>; waitFor?: RegExp; timeoutMs?: number } = {},
): Promise<Started> {
  const child = spawn(command, args, { cwd: ROOT, env: { ...process.env, ...options.env }, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  child.stdout!.on("data", (d) => (out += d));
  child.stderr!.on("data", (d) => (out += d));
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  const running = () => child.exitCode === null && child.signalCode === null;
  const stop = async (signal: NodeJS.Signals = "SIGTERM", killAfterMs?: number) => {
    if (running()) child.kill(signal);
    const kill = killAfterMs === undefined ? undefined : setTimeout(() => running() && child.kill("SIGKILL"), killAfterMs);
    try {
      return await exited;
    } finally {
      clearTimeout(kill);
    }
  };
  if (options.waitFor) {
    const pattern = options.waitFor;
    const deadline = Date.now() + (options.timeoutMs ?? 30_000);
    while (!pattern.test(out)) {
      if (child.exitCode !== null) throw new Error(`${command} exited (${child.exitCode}) before ${pattern}:\n${out}`);
      if (Date.now() > deadline) {
        await stop("SIGKILL");
        throw new Error(`timed out waiting for ${pattern} from ${command}:\n${out}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  return { child, output: () => out, exited, stop };
}

/** Runs a command to completion; never throws on a non-zero exit. */
export function runCommand(command: string, args: string[], timeoutMs = 30_000): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(command, args, { cwd: ROOT, timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === "number" ? err.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** Whether something already listens on 127.0.0.1:port (binding it fails with EADDRINUSE). */
export async function portTaken(port: number): Promise<boolean> {
  const server = createServer();
  try {
    server.listen(port, "127.0.0.1");
    await Promise.race([once(server, "listening"), once(server, "error").then(([err]) => Promise.reject(err))]);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EADDRINUSE") return true;
    throw err;
  }
  server.close();
  await once(server, "close");
  return false;
}

/**
 * The program a process runs: its command line's first word. ss names the process by its
 * main thread, which Node 24 calls "MainThread".
 */
function programOf(pid: string, threadName: string): string {
  try {
    const program = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0")[0];
    return program ? basename(program) : threadName;
  } catch {
    return threadName;
  }
}

/** Who listens on a TCP port ("envoy (pid 123)"), when `ss -ltnp` can tell. */
export async function portHolder(port: number): Promise<string | undefined> {
  const { code, stdout } = await runCommand("ss", ["-ltnpH", `sport = :${port}`], 5_000);
  if (code !== 0) return undefined;
  const processes = [...stdout.matchAll(/\("([^"]+)",pid=(\d+)/g)].map(([, name, pid]) => `${programOf(pid!, name!)} (pid ${pid})`);
  return processes.length > 0 ? [...new Set(processes)].join(", ") : undefined;
}

/** What a file holds from byte `from` on (what a process appended since), without reading what came before. */
export function readSince(file: string, from: number): string {
  const fd = openSync(file, "r");
  try {
    const bytes = Buffer.alloc(Math.max(0, fstatSync(fd).size - from));
    readSync(fd, bytes, 0, bytes.length, from);
    return bytes.toString("utf8");
  } finally {
    closeSync(fd);
  }
}

/**
 * The cause of a failed process from its log, written since `fromByte`: from the first
 * line that reads like an error (a thrown error's "XError: ...", pino level >= 50, Envoy's
 * [error]/[critical], anything saying error), with stack frames after the first left
 * out; the last lines when nothing reads like an error.
 */
export function logCause(file: string, fromByte = 0, maxLines = 8): string {
  let text: string;
  try {
    text = readSince(file, fromByte);
  } catch {
    return "";
  }
  const lines = text.split("\n").filter((line) => line.trim() !== "");
  const patterns = [/^\s*\w*(Error|Exception)\b[^:]*:/, /"level":(5|6)\d|\[(error|critical)\]/, /error|exception|fatal|refused|in use/i];
  const first = patterns.map((p) => lines.findIndex((line) => p.test(line))).find((i) => i !== -1);
  const from = first === undefined ? lines.slice(-maxLines) : lines.slice(first);
  const picked = from.filter((line, i) => !/^\s+at /.test(line) || !/^\s+at /.test(from[i - 1] ?? "")).slice(0, maxLines);
  return picked.map((line) => (line.length > 400 ? `${line.slice(0, 400)}...` : line)).join("\n");
}

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** Why it could not be started at all (spawn ENOENT...). */
  error?: string;
}

/** "exit code 1, signal none", or why it never started. */
export const describeExit = ({ code, signal, error }: ExitInfo) => error ?? `exit code ${code ?? "none"}, signal ${signal ?? "none"}`;

/** Indents every line of a quoted log excerpt. */
export const indent = (text: string) => text.replace(/^/gm, "    ");

export interface RestartPolicy {
  /** Delay before the second restart in a row; the first is immediate, as in Kubernetes. */
  initialDelayMs: number;
  maxDelayMs: number;
  /** Give up after this many restarts in a row without a stable run. */
  maxRestarts: number;
  /** A run this long resets the backoff. */
  stableAfterMs: number;
}

/** Kubernetes' container restart policy scaled down for a laptop (Kubernetes: 10 s doubling to 5 min, reset after 10 min). */
export const defaultRestartPolicy: RestartPolicy = { initialDelayMs: 1000, maxDelayMs: 30_000, maxRestarts: 5, stableAfterMs: 60_000 };

export interface SupervisedSpec {
  /** What it is, for log lines: "feature app", "envoy prediction-v1". */
  name: string;
  command: string;
  args: string[];
  env?: Record<string, string | undefined>;
  cwd?: string;
  logFile: string;
  policy?: RestartPolicy;
  /** Where restart and give-up lines go. */
  log: (line: string) => void;
}

/**
 * A child process restarted when it dies on its own, with exponential backoff and a
 * crash-loop limit, like a Kubernetes container with restartPolicy: Always. Until
 * `supervise()` is called an exit is only reported (onExit), so a start-up can fail
 * with the cause instead of looping. A deliberate stop() is never restarted.
 */
export class Supervised {
  child!: ChildProcess;
  /** Byte offset of the log where the current run started. */
  logStart = 0;
  restarts = 0;
  private restartsInRow = 0;
  private startedAt = 0;
  private supervising = false;
  private stopped = false;
  private timer: NodeJS.Timeout | undefined;
  private readonly policy: RestartPolicy;
  private readonly exitListeners: ((exit: ExitInfo) => void)[] = [];

  constructor(readonly spec: SupervisedSpec) {
    this.policy = spec.policy ?? defaultRestartPolicy;
  }

  start(): this {
    if (this.running) throw new Error(`${this.spec.name} is already running (pid ${this.child.pid})`);
    this.stopped = false;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.logStart = existsSync(this.spec.logFile) ? statSync(this.spec.logFile).size : 0;
    const log = openSync(this.spec.logFile, "a");
    // Its own process group: a Ctrl-C at the terminal reaches only the parent, which
    // stops children deliberately instead of racing their supervisor.
    const child = spawn(this.spec.command, this.spec.args, { cwd: this.spec.cwd ?? ROOT, env: { ...process.env, ...this.spec.env }, stdio: ["ignore", log, log], detached: true });
    closeSync(log);
    this.child = child;
    this.startedAt = performance.now();
    child.on("error", (err) => {
      // A spawn that failed has no pid and may never emit "exit".
      if (child.pid === undefined && child === this.child) for (const listener of this.exitListeners) listener({ code: null, signal: null, error: err.message });
      else this.spec.log(`${this.spec.name}: ${err.message}`);
    });
    child.on("exit", (code, signal) => {
      if (child !== this.child) return;
      const exit = { code, signal };
      for (const listener of this.exitListeners) listener(exit);
      if (!this.stopped && this.supervising) this.scheduleRestart(exit);
    });
    return this;
  }

  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Calls back on every exit of every run, deliberate or not. */
  onExit(listener: (exit: ExitInfo) => void): void {
    this.exitListeners.push(listener);
  }

  /** From now on, an exit that nobody asked for restarts the process. */
  supervise(): void {
    this.supervising = true;
  }

  /** The cause of the last exit, from the log of the last run. */
  cause(): string {
    return logCause(this.spec.logFile, this.logStart);
  }

  private scheduleRestart(exit: ExitInfo): void {
    if (performance.now() - this.startedAt >= this.policy.stableAfterMs) this.restartsInRow = 0;
    const how = describeExit(exit);
    if (this.restartsInRow >= this.policy.maxRestarts) {
      this.stopped = true;
      this.spec.log(`${this.spec.name} is crash-looping (${this.restartsInRow + 1} exits in a row, last: ${how}); giving up. Its log (${this.spec.logFile}) says:\n${indent(this.cause())}`);
      return;
    }
    const delayMs = this.restartsInRow === 0 ? 0 : Math.min(this.policy.initialDelayMs * 2 ** (this.restartsInRow - 1), this.policy.maxDelayMs);
    this.restartsInRow++;
    this.restarts++;
    this.spec.log(`${this.spec.name} exited (${how}); restarting${delayMs ? ` in ${delayMs / 1000} s` : ""} (restart ${this.restartsInRow} of at most ${this.policy.maxRestarts} in a row)`);
    this.timer = setTimeout(() => this.start(), delayMs);
  }

  /** Stops it for good (SIGTERM, then SIGKILL after timeoutMs); resolves once it has exited. */
  async stop(signal: NodeJS.Signals = "SIGTERM", timeoutMs = 15_000): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    const child = this.child;
    if (!this.running) return;
    const exited = once(child, "exit");
    child.kill(signal);
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    await exited;
    clearTimeout(timer);
  }
}

