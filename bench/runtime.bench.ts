// Server runtime: the same echo implementation served by the kit (grpc-js) and by
// @connectrpc/connect-node (h2c), each in its own process, loaded by ghz in turn.
import { freePort, startProcess } from "../scripts/lib/processes.js";
import { ghz, ratio, type BenchSuite, type ScenarioResult } from "./harness.js";

const payloads = { trivial: "ping", predict_sized: "x".repeat(2048) };

async function serve(entry: string, measureFn: (address: string) => Promise<ScenarioResult[]>) {
  const port = await freePort();
  const proc = await startProcess("node", ["--import", "tsx", entry], {
    env: { GRPC_PORT: String(port), LOG_LEVEL: "info" },
    waitFor: /listening/,
  });
  try {
    return await measureFn(`127.0.0.1:${port}`);
  } finally {
    await proc.stop();
  }
}

const suite: BenchSuite = {
  name: "runtime",
  async run() {
    const durationS = Number(process.env.BENCH_SECONDS ?? 8);
    const load = (runtime: string) => async (address: string) => {
      const out: ScenarioResult[] = [];
      for (const [size, message] of Object.entries(payloads)) {
        out.push(
          await ghz({
            name: `echo ${size} / ${runtime}`,
            address,
            call: "recsys.echo.v1.EchoService.Echo",
            proto: "recsys/echo/v1/echo.proto",
            data: { message },
            concurrency: 50,
            connections: 2,
            durationS,
          }),
        );
      }
      return out;
    };
    const grpcJs = await serve("services/echo/server.ts", load("grpc-js"));
    const connect = await serve("bench/servers/connect-echo.ts", load("connect-node"));
    const ratios = Object.keys(payloads).map((size, i) =>
      ratio(`echo ${size}: grpc-js QPS / connect-node QPS`, grpcJs[i]!.qps / connect[i]!.qps, "informational (choose the faster)", true),
    );
    return { scenarios: [...grpcJs, ...connect], ratios };
  },
};
export default suite;
