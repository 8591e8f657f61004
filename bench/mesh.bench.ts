// The mesh's cost per hop: the echo service called directly, and through the edge
// Envoy and its sidecar (two proxies), with the same load, in the same run.
import { startMesh } from "../scripts/lib/mesh.js";
import { loadGeneratorAuth } from "../scripts/lib/token.js";
import { ghz, ratio, type BenchSuite } from "./harness.js";

const suite: BenchSuite = {
  name: "mesh",
  async run() {
    const durationS = Number(process.env.BENCH_SECONDS ?? 10);
    const mesh = await startMesh({ only: ["echo"], env: { LOG_LEVEL: "warn" } });
    try {
      const echo = mesh.instances.find((i) => i.service === "echo")!;
      const metadata = await loadGeneratorAuth("bench-mesh");
      const load = (name: string, address: string) =>
        ghz({
          name,
          address,
          call: "recsys.echo.v1.EchoService.Echo",
          proto: "recsys/echo/v1/echo.proto",
          data: { message: "x".repeat(256) },
          concurrency: 50,
          connections: 4,
          durationS,
          metadata,
        });
      const direct = await load("echo direct", `127.0.0.1:${echo.appPort}`);
      const meshed = await load("echo via edge + sidecar", mesh.edge);
      return {
        scenarios: [direct, meshed],
        ratios: [
          ratio("echo QPS via edge + sidecar / direct", meshed.qps / direct.qps, "informational: the mesh's cost (2 proxies on the same 2 cores)", true),
          ratio("echo p99 added by edge + sidecar (ms)", meshed.p99_ms - direct.p99_ms, "informational", true),
          ratio("errors through the mesh", meshed.errors, "0", meshed.errors === 0),
        ],
      };
    } finally {
      await mesh.stop();
    }
  },
};
export default suite;
