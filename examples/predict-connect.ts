// A Node client speaking the Connect protocol to the edge with
// @connectrpc/connect-node and the generated client from gen/: JSON over HTTP/1.1,
// the same requests a browser or curl sends. (Through the edge, Connect reaches the
// prediction service; call the other services with gRPC.)
//
//   npx tsx examples/predict-connect.ts [--edge http://127.0.0.1:8080] [--user u000001] [--count 5] [--canary v2] [--json]
import { parseArgs } from "node:util";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { toJson } from "@bufbuild/protobuf";
import { CacheLevel, FallbackLevel, PredictionService, PredictResponseSchema } from "../gen/recsys/prediction/v1/prediction_pb.js";

const { values } = parseArgs({
  options: {
    edge: { type: "string", default: "http://127.0.0.1:8080" },
    user: { type: "string", default: "u000001" },
    count: { type: "string", default: "5" },
    canary: { type: "string" },
    json: { type: "boolean", default: false },
  },
});

const transport = createConnectTransport({ baseUrl: values.edge, httpVersion: "1.1", useBinaryFormat: false });
const client = createClient(PredictionService, transport);

try {
  const res = await client.predict(
    { userId: values.user, numPredictions: Number(values.count) },
    { timeoutMs: 5000, headers: values.canary ? { "x-canary": values.canary } : {} },
  );
  if (values.json) {
    console.log(JSON.stringify(toJson(PredictResponseSchema, res)));
  } else {
    const m = res.metadata!;
    console.log(`variant ${m.variant}, cache ${CacheLevel[m.cacheLevel]}, fallback ${FallbackLevel[m.fallbackLevel]}, ${m.latencyMs.toFixed(1)} ms, trace ${m.traceId}`);
    for (const p of res.predictions) console.log(`${String(p.rank).padStart(3)}  ${p.itemId}  ${p.score.toFixed(4)}  ${p.explanation}`);
  }
} catch (err) {
  const e = ConnectError.from(err);
  console.error(`Predict failed: ${Code[e.code]}: ${e.rawMessage}`);
  process.exit(1);
}
