/**
 * Sends malformed and mutated gRPC frames to every RPC of every service for a
 * bounded time, and prints the answers' codes per method. Loopback only.
 *
 *   npm run fuzz -- [address] [--seconds 60] [--concurrency 16] [--seed N] [--services echo,prediction] [--timeout-ms 1000]
 *
 * Default address: the edge, 127.0.0.1:8080. Each call carries grpc-timeout
 * --timeout-ms, so a well-formed Health/Watch ends as DEADLINE_EXCEEDED.
 *
 * A method that answers only UNIMPLEMENTED is not served at this address and is
 * listed as such. Exits 1 when any call to a served method answered INTERNAL,
 * UNIMPLEMENTED or UNKNOWN, or got no status at all (reset stream, lost
 * connection), or health was not SERVING at the end.
 */
import { isIP } from "node:net";
import { parseArgs } from "node:util";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Health, HealthCheckResponse_ServingStatus } from "../gen/grpc/health/v1/health_pb.js";
import { RawGrpcClient, allServices, codeName, fuzzCases, methodPath, runPool, type FuzzCase } from "../test/support/fuzz-frames.js";

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    seconds: { type: "string", default: "60" },
    concurrency: { type: "string", default: "16" },
    seed: { type: "string", default: String(Date.now() % 1_000_000) },
    services: { type: "string" },
    "timeout-ms": { type: "string", default: "1000" },
  },
});
const address = positionals[0] ?? "127.0.0.1:8080";
const seconds = Number(values.seconds);
const concurrency = Number(values.concurrency);
const seed = Number(values.seed);
const timeoutMs = Number(values["timeout-ms"]);
const host = address.slice(0, address.lastIndexOf(":")).replace(/^\[|\]$/g, "");
if (!(host === "localhost" || (isIP(host) === 4 && host.startsWith("127.")) || host === "::1")) {
  console.error(`refusing ${address}: the fuzzer only sends to loopback addresses`);
  process.exit(2);
}
if (!(seconds > 0 && seconds <= 3600) || !(concurrency >= 1 && concurrency <= 256) || !Number.isInteger(seed) || !(timeoutMs >= 10 && timeoutMs <= 60_000)) {
  console.error("--seconds must be in (0, 3600], --concurrency in [1, 256], --seed an integer, --timeout-ms in [10, 60000]");
  process.exit(2);
}
const wanted = values.services?.split(",");
const services = allServices.filter((s) => !wanted || wanted.some((name) => s.typeName.toLowerCase().includes(name.toLowerCase())));
const methods = services.flatMap((s) => s.methods);

/** Every method in turn, a new seed per round, until the time is up. */
function* casesUntil(deadline: number): Generator<FuzzCase> {
  for (let round = 0; Date.now() < deadline; round++) {
    for (const [i, method] of methods.entries()) yield* fuzzCases(method, seed + round * methods.length + i, 1);
  }
}

const healthStatus = () =>
  createClient(Health, createGrpcTransport({ baseUrl: `http://${address}` }))
    .check({}, { timeoutMs: 5_000 })
    .then(
      (r) => HealthCheckResponse_ServingStatus[r.status],
      (err: unknown) => `unreachable (${String(err)})`,
    );
const healthBefore = await healthStatus();
if (healthBefore !== "SERVING") {
  console.error(`${address} is not SERVING before the run: ${healthBefore}`);
  process.exit(2);
}

const badCodes = new Set(["UNKNOWN", "UNIMPLEMENTED", "INTERNAL"]);
const isBad = (code: string) => badCodes.has(code) || code.startsWith("FAILED");
const byMethod = new Map<string, Map<string, number>>();
const examples = new Map<string, string[]>();
const client = new RawGrpcClient(address);
const started = Date.now();
console.log(`fuzzing ${address}: ${methods.length} methods of ${services.length} services, ${seconds} s, concurrency ${concurrency}, seed ${seed}`);
await runPool(casesUntil(started + seconds * 1000), concurrency, async (fuzz) => {
  const outcome = await client.call(fuzz.path, fuzz.body, fuzz.headers, timeoutMs);
  const counts = byMethod.get(fuzz.path) ?? new Map<string, number>();
  byMethod.set(fuzz.path, counts);
  const code = codeName(outcome);
  counts.set(code, (counts.get(code) ?? 0) + 1);
  const seen = examples.get(fuzz.path) ?? [];
  examples.set(fuzz.path, seen);
  if (isBad(code) && seen.length < 3) seen.push(`  ${fuzz.path} ${fuzz.name}: ${code} ${outcome.message}`);
});
client.close();

const total = new Map<string, number>();
const notServed: string[] = [];
const badExamples: string[] = [];
let badCount = 0;
const byCount = (counts: Map<string, number>) => [...counts].sort((a, b) => b[1] - a[1]).map(([code, count]) => `${code}=${count}`).join(" ");
for (const method of methods) {
  const path = methodPath(method);
  const counts = byMethod.get(path) ?? new Map<string, number>();
  const n = [...counts.values()].reduce((a, b) => a + b, 0);
  if (n > 0 && counts.get("UNIMPLEMENTED") === n) {
    notServed.push(path);
    continue;
  }
  for (const [code, count] of counts) {
    total.set(code, (total.get(code) ?? 0) + count);
    if (isBad(code)) badCount += count;
  }
  badExamples.push(...(examples.get(path) ?? []));
  console.log(`${path}  n=${n}  ${byCount(counts)}`);
}
const calls = [...total.values()].reduce((a, b) => a + b, 0);
console.log(`total  n=${calls} in ${((Date.now() - started) / 1000).toFixed(1)} s  ${byCount(total)}`);
if (notServed.length > 0) console.log(`not served here (only UNIMPLEMENTED): ${notServed.join(" ")}`);
console.log(`bad (INTERNAL, UNIMPLEMENTED, UNKNOWN, no status): ${badCount}`);
if (badExamples.length > 0) console.log(badExamples.join("\n"));

const health = await healthStatus();
console.log(`health: ${health}`);
process.exit(badCount === 0 && health === "SERVING" ? 0 : 1);
