import { pathToFileURL } from "node:url";
import { exitOnSignals, startServer } from "../kit/index.js";
import { loadEchoConfig } from "./config.js";
import { echoService } from "./handlers.js";

export async function startEchoService(env: Record<string, string | undefined> = process.env) {
  const config = loadEchoConfig(env);
  const running = await startServer({ name: "echo", config, services: [echoService()] });
  running.setReady(true);
  return running;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  exitOnSignals(await startEchoService());
}
