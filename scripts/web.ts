// `npm run web`: the browser console on its own loopback port (scripts/lib/web.ts).
//   npx tsx scripts/web.ts [--port 8088] [--edge http://127.0.0.1:8080]
import { parseArgs } from "node:util";
import { pathToFileURL } from "node:url";
import { startWebConsole } from "./lib/web.js";

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const { values } = parseArgs({ options: { port: { type: "string" }, edge: { type: "string" } } });
  const web = await startWebConsole({ port: values.port ? Number(values.port) : undefined, edgeUrl: values.edge });
  console.log(`console: ${web.url}`);
  const stop = () => void web.stop().then(() => process.exit(0));
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
}
