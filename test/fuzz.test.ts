import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { DescService } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { findTrailerError } from "@connectrpc/connect/protocol-grpc";
import { ErrorInfoSchema } from "../gen/google/rpc/error_details_pb.js";
import { Health, HealthCheckResponse_ServingStatus } from "../gen/grpc/health/v1/health_pb.js";
import { EchoService } from "../gen/recsys/echo/v1/echo_pb.js";
import { ExperimentService } from "../gen/recsys/experiment/v1/experiment_pb.js";
import { FeatureService } from "../gen/recsys/feature/v1/feature_pb.js";
import { PredictionService } from "../gen/recsys/prediction/v1/prediction_pb.js";
import { RetrievalService } from "../gen/recsys/retrieval/v1/retrieval_pb.js";
import { ROOT } from "../scripts/lib/tools.js";
import { startEchoService } from "../services/echo/server.js";
import { startExperimentService } from "../services/experiment/server.js";
import { startFeatureService } from "../services/feature/server.js";
import type { RunningServer } from "../services/kit/index.js";
import { startPredictionService } from "../services/prediction/server.js";
import { startRetrievalService } from "../services/retrieval/server.js";
import { RawGrpcClient, codeName, fuzzCases, methodPath, runPool, type FuzzOutcome } from "./support/fuzz-frames.js";
import { startRedis, type TestRedis } from "./support/redis.js";

/** Cases per kind of malformed request per method: 13 kinds x 4 = 52 calls per method. */
const PER_KIND = 4;
const CONCURRENCY = 8;
const SEED = Number(process.env.FUZZ_SEED ?? 20_261_128);

interface App {
  name: string;
  service: DescService;
  start: () => Promise<RunningServer>;
  /** A well-formed call that must keep answering while the fuzz runs. */
  valid: (address: string) => Promise<unknown>;
}

const transport = (address: string) => createGrpcTransport({ baseUrl: `http://${address}` });

describe("fuzzing every RPC of every service with malformed gRPC frames", () => {
  let redis: TestRedis;
  let dir: string;

  const apps: App[] = [
    {
      name: "echo",
      service: EchoService,
      start: () => startEchoService({ GRPC_PORT: "0", LOG_LEVEL: "silent" }),
      valid: (address) => createClient(EchoService, transport(address)).echo({ message: "still here" }),
    },
    {
      name: "experiment",
      service: ExperimentService,
      start: () => startExperimentService({ GRPC_PORT: "0", LOG_LEVEL: "silent", REDIS_URL: redis.url }),
      valid: (address) => createClient(ExperimentService, transport(address)).assign({ userId: "u000001" }),
    },
    {
      name: "feature",
      service: FeatureService,
      // A loaded machine may take longer than the default 500 ms for a PING, which turns health NOT_SERVING.
      start: () => startFeatureService({ GRPC_PORT: "0", LOG_LEVEL: "silent", REDIS_URL: redis.url, REDIS_COMMAND_TIMEOUT_MS: "5000" }),
      valid: (address) => createClient(FeatureService, transport(address)).listFeatureViews({}),
    },
    {
      name: "retrieval",
      service: RetrievalService,
      start: async () => {
        const server = await startRetrievalService({
          GRPC_PORT: "0",
          LOG_LEVEL: "silent",
          REDIS_URL: redis.url,
          MODELS_DIR: join(ROOT, "models"),
          RETRIEVAL_DATA_DIR: join(dir, "retrieval"),
        });
        await server.ready;
        return server;
      },
      valid: (address) => createClient(RetrievalService, transport(address)).getPopular({ k: 5 }),
    },
    {
      name: "prediction",
      service: PredictionService,
      start: () => startPredictionService({ GRPC_PORT: "0", LOG_LEVEL: "silent", REDIS_URL: redis.url, MODELS_DIR: join(ROOT, "models"), MODELS_POLL_MS: "0" }),
      valid: (address) => createClient(PredictionService, transport(address)).predict({ userId: "u000001", numPredictions: 5 }, { timeoutMs: 10_000 }),
    },
  ];

  beforeAll(async () => {
    redis = await startRedis();
    dir = mkdtempSync(join(tmpdir(), "recsys-fuzz-"));
  });
  afterAll(async () => {
    await redis?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  for (const app of apps) {
    it(`${app.name}: no INTERNAL, no UNIMPLEMENTED, no crash; valid calls keep answering; SERVING at the end`, async () => {
      const server = await app.start();
      const address = `127.0.0.1:${server.port}`;
      const raw = new RawGrpcClient(address);
      const health = createClient(Health, transport(address));
      try {
        const methods = [...app.service.methods, ...Health.methods.filter((m) => m.name === "Check")];
        const cases = methods.flatMap((method, i) => [...fuzzCases(method, SEED + i, PER_KIND)]);
        const failures: string[] = [];
        const counts = new Map<string, number>();
        const malformedAnswers = new Set<string>();
        const record = (name: string, path: string, outcome: FuzzOutcome) => {
          const code = codeName(outcome);
          counts.set(code, (counts.get(code) ?? 0) + 1);
          if (outcome.code === undefined || outcome.code === 13 || outcome.code === 12 || outcome.code === 2) {
            failures.push(`${path} ${name}: ${code} ${outcome.message}`);
          }
          if (outcome.code === 3 && findTrailerError(outcome.metadata)?.findDetails(ErrorInfoSchema)[0]?.reason === "MALFORMED_REQUEST") {
            malformedAnswers.add(path);
          }
        };
        let sent = 0;
        await runPool(cases, CONCURRENCY, async (fuzz) => {
          record(fuzz.name, fuzz.path, await raw.call(fuzz.path, fuzz.body, fuzz.headers));
          // A well-formed call every so often: the fuzz must not have broken the server.
          if (++sent % 50 === 0) await app.valid(address);
        });
        // The frame from the issue: 3 bytes that are not protobuf, on every method.
        for (const method of methods) record("issue frame 00 00000003 ffffff", methodPath(method), await raw.call(methodPath(method), Buffer.from("0000000003ffffff", "hex")));

        expect(failures).toEqual([]);
        expect([...malformedAnswers].sort()).toEqual(methods.map(methodPath).sort());
        expect(sent).toBe(cases.length);
        await app.valid(address);
        // Health is read, not raced: an app that stays NOT_SERVING fails here.
        const deadline = Date.now() + 15_000;
        let status = (await health.check({})).status;
        while (status !== HealthCheckResponse_ServingStatus.SERVING && Date.now() < deadline) {
          await new Promise((r) => setTimeout(r, 200));
          status = (await health.check({})).status;
        }
        expect(status).toBe(HealthCheckResponse_ServingStatus.SERVING);
        console.log(`${app.name}: ${cases.length + methods.length} malformed calls over ${methods.length} methods:`, Object.fromEntries(counts));
      } finally {
        raw.close();
        await server.shutdown();
      }
    }, 180_000);
  }
});
