// A Node backend calling Predict through the edge with @grpc/grpc-js, the way a
// service in another language would: the .proto files loaded at run time with
// @grpc/proto-loader (no generated code), and deadlines and retries from a gRPC
// service config rather than hand-written loops.
//
//   npx tsx examples/predict-grpc-js.ts [--addr 127.0.0.1:8080] [--user u000001] [--count 5] [--canary v2] [--json]
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const PROTO_ROOT = join(fileURLToPath(new URL(".", import.meta.url)), "..", "proto");

/**
 * Every Predict attempt gets 2 s (timeout); UNAVAILABLE (an instance going away,
 * the edge shedding a connection) is retried up to 3 attempts in all with backoff.
 * Only UNAVAILABLE: Predict is a read, but a DEADLINE_EXCEEDED retry would only
 * add load to a server that is already slow.
 */
const serviceConfig = {
  methodConfig: [
    {
      name: [{ service: "recsys.prediction.v1.PredictionService", method: "Predict" }],
      timeout: "2s",
      retryPolicy: { maxAttempts: 3, initialBackoff: "0.1s", maxBackoff: "1s", backoffMultiplier: 2, retryableStatusCodes: ["UNAVAILABLE"] },
    },
  ],
};

interface PredictResponse {
  predictions: { itemId: string; score: number; rank: number; explanation: string; category: string }[];
  metadata: { variant: string; cacheLevel: string; fallbackLevel: string; traceId: string; latencyMs: number };
}
type PredictionClient = grpc.Client & {
  predict(request: object, metadata: grpc.Metadata, options: grpc.CallOptions, callback: (err: grpc.ServiceError | null, res?: PredictResponse) => void): grpc.ClientUnaryCall;
};

const { values } = parseArgs({
  options: {
    addr: { type: "string", default: "127.0.0.1:8080" },
    user: { type: "string", default: "u000001" },
    count: { type: "string", default: "5" },
    canary: { type: "string" },
    json: { type: "boolean", default: false },
  },
});

const definition = protoLoader.loadSync("recsys/prediction/v1/prediction.proto", {
  includeDirs: [PROTO_ROOT],
  keepCase: false,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const loaded = grpc.loadPackageDefinition(definition) as unknown as {
  recsys: { prediction: { v1: { PredictionService: new (address: string, credentials: grpc.ChannelCredentials, options: grpc.ChannelOptions) => PredictionClient } } };
};
const client = new loaded.recsys.prediction.v1.PredictionService(values.addr, grpc.credentials.createInsecure(), {
  "grpc.service_config": JSON.stringify(serviceConfig),
});

const metadata = new grpc.Metadata();
if (values.canary) metadata.set("x-canary", values.canary);
// The overall deadline bounds every attempt together.
const deadline = new Date(Date.now() + 5000);
client.predict({ userId: values.user, numPredictions: Number(values.count) }, metadata, { deadline }, (err, res) => {
  client.close();
  if (err || !res) {
    console.error(`Predict failed: ${grpc.status[err?.code ?? grpc.status.UNKNOWN]}: ${err?.details ?? "no answer"}`);
    process.exit(1);
  }
  if (values.json) {
    console.log(JSON.stringify(res));
    return;
  }
  const m = res.metadata;
  console.log(`variant ${m.variant}, cache ${m.cacheLevel}, fallback ${m.fallbackLevel}, ${m.latencyMs.toFixed(1)} ms, trace ${m.traceId}`);
  for (const p of res.predictions) console.log(`${String(p.rank).padStart(3)}  ${p.itemId}  ${p.score.toFixed(4)}  ${p.explanation}`);
});
