// `npm start [-- --redis-cluster]`: the whole mesh on this machine (on one Redis, or on a
// 6-node Redis Cluster). Logs go to .run/logs/; Ctrl-C stops everything. A process that
// dies once the mesh is up is restarted (see Supervised).
import { parseArgs } from "node:util";
import { availableServices, startMesh, type Mesh } from "./lib/mesh.js";
import { tool } from "./lib/tools.js";
import { startWebConsole, type WebConsole } from "./lib/web.js";

const { values: args } = parseArgs({ options: { "redis-cluster": { type: "boolean", default: false } } });
const started = performance.now();
const services = availableServices();
console.log(`starting ${services.join(", ")} with their Envoy sidecars, and the edge...`);
// Ctrl-C or SIGTERM: during start-up it stops what has started so far; once up, the
// mesh. One handler throughout, so no signal finds the process without one.
const interrupted = new AbortController();
let mesh: Mesh | undefined;
let web: WebConsole | undefined;
let stopping = false;
const stop = async () => {
  if (!mesh) return interrupted.abort();
  if (stopping) return;
  stopping = true;
  console.log("\nstopping...");
  await web?.stop();
  await mesh.stop();
  process.exit(0);
};
process.on("SIGINT", stop);
process.on("SIGTERM", stop);
mesh = await startMesh({ signal: interrupted.signal, redisCluster: args["redis-cluster"] }).catch((err: Error) => {
  console.error(`npm start failed: ${err.message}`);
  process.exit(1);
});
web = await startWebConsole({
  edgeUrl: `http://${mesh.edge}`,
  edgeAdmin: mesh.edgeAdmin,
  metricsUrls: Object.fromEntries(mesh.instances.filter((i) => i.service === "prediction").map((i) => [i.version, `http://127.0.0.1:${i.metricsPort}/metrics`])),
}).catch(async (err: Error) => {
  console.error(`npm start failed: the web console did not start: ${err.message}`);
  await mesh?.stop();
  process.exit(1);
});
const seconds = ((performance.now() - started) / 1000).toFixed(1);
const grpcurl = tool("grpcurl");
const ghz = tool("ghz");
const rows = mesh.instances.map((i) => `  ${i.id.padEnd(15)} app 127.0.0.1:${i.appPort}  sidecar ingress :${i.ingressPort}  admin :${i.sidecarAdminPort}  metrics :${i.metricsPort}/metrics`);
const hasPrediction = services.includes("prediction");
console.log(`
recsys-mesh is up in ${seconds}s (${mesh.redisClusterNodes ? `Redis Cluster ${mesh.redisClusterNodes}` : `Redis ${mesh.redisUrl}`}).

  edge (gRPC, gRPC-web, Connect)  ${mesh.edge}
  edge admin (stats, runtime)     ${mesh.edgeAdmin}
  browser console                 ${web.url}
${rows.join("\n")}
  logs                            ${mesh.logDir}

Try it:
  ${grpcurl} -plaintext -import-path proto -proto recsys/echo/v1/echo.proto -d '{"message":"hello"}' ${mesh.edge} recsys.echo.v1.EchoService/Echo
${hasPrediction ? `  ${grpcurl} -plaintext -d '{"user_id":"u000001","num_predictions":5}' ${mesh.edge} recsys.prediction.v1.PredictionService/Predict
  ${grpcurl} -plaintext ${mesh.edge} list
  ${tool("grpc-health-probe")} -addr=${mesh.edge}
  curl -s -H 'content-type: application/json' -d '{"userId":"u000001"}' http://${mesh.edge}/recsys.prediction.v1.PredictionService/Predict
` : ""}  ${ghz} --insecure --import-paths proto --proto recsys/echo/v1/echo.proto --call recsys.echo.v1.EchoService.Echo -d '{"message":"hi"}' -c 50 -z 10s ${mesh.edge}
  curl -s ${mesh.edgeAdmin}/stats?filter=cluster.*upstream_rq_total

Admin and internal RPCs need a token (the edge verifies it; anonymous callers get public RPCs at a small rate):
  TOKEN=$(npm run -s token -- --role admin --user ops --tier enterprise)
  ${grpcurl} -plaintext -H "authorization: Bearer $TOKEN" -d '{"all":true}' ${mesh.edge} recsys.prediction.v1.PredictionService/InvalidateCache

A process that dies is restarted (exponential backoff; a crash loop gives up loudly). Ctrl-C stops everything.`);
