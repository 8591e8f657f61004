// `npm run observe`: Zipkin and Prometheus next to the local mesh, on loopback, and
// tracing turned on in every Envoy (scripts/lib/observe.ts).
//   npm run observe                    next to a running mesh (npm start)
//   npm run observe -- --mesh          starts a mesh of its own (apps exporting to Zipkin) and the console
//   npm run observe -- --prod-rules    the alert rules as written (dev shortens their `for:`)
import { parseArgs } from "node:util";
import { pathToFileURL } from "node:url";
import { localPorts } from "../envoy/topology.js";
import { startMesh, type Mesh } from "./lib/mesh.js";
import { startObserve } from "./lib/observe.js";
import { startWebConsole, type WebConsole } from "./lib/web.js";

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const { values } = parseArgs({ options: { mesh: { type: "boolean" }, "prod-rules": { type: "boolean" } } });
  let mesh: Mesh | undefined;
  let web: WebConsole | undefined;
  const edgeUp = await fetch(`http://127.0.0.1:${localPorts.edgeAdmin}/ready`).then((r) => r.ok, () => false);
  if (values.mesh) {
    mesh = await startMesh();
    web = await startWebConsole();
  } else if (!edgeUp) {
    console.error(`no mesh is running (edge admin 127.0.0.1:${localPorts.edgeAdmin} does not answer): start one with npm start, or run npm run observe -- --mesh`);
    process.exit(1);
  }
  const observe = await startObserve({ devRules: !values["prod-rules"] }).catch(async (err: Error) => {
    await Promise.all([web?.stop(), mesh?.stop()]);
    console.error(err.message);
    process.exit(1);
  });
  console.log(`traces      ${observe.zipkinUrl}/zipkin/   (a Predict's metadata.traceId: ${observe.zipkinUrl}/zipkin/traces/<traceId>)
metrics     ${observe.prometheusUrl}/graph   alerts ${observe.prometheusUrl}/alerts   rules ${observe.prometheusUrl}/rules
dashboard   ${web?.url ?? `http://127.0.0.1:${localPorts.webConsole}`}/#dashboard (the console's "Service health")
Ctrl-C stops ${mesh ? "the mesh, the console and " : ""}the backends.`);
  let stopping = false;
  const shutdown = () => {
    if (stopping) process.exit(1);
    stopping = true;
    void Promise.all([observe.stop(), web?.stop(), mesh?.stop()]).then(() => process.exit(0));
  };
  process.on("SIGINT", shutdown);
  process.on("SIGTERM", shutdown);
}
