import { spawn, execFile, type ChildProcess } from "node:child_process";
import { createServer } from "node:net";
import { once } from "node:events";
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
  stop: (signal?: NodeJS.Signals) => Promise<number | null>;
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
  const stop = async (signal: NodeJS.Signals = "SIGTERM") => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    return exited;
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
