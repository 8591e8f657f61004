import { pathToFileURL } from "node:url";
import { baseConfigShape, exitOnSignals, loadConfig, startServer } from "../kit/index.js";
import { echoService } from "./handlers.js";

export async function startEcho(env: Record<string, string | undefined> = process.env) {
  const config = loadConfig(baseConfigShape, env);
  const running = await startServer({ name: "echo", config, services: [echoService] });
  running.setReady(true);
  return running;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  exitOnSignals(await startEcho());
}
