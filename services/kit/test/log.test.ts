// Log lines written inside a traced call carry its trace and span id, so a trace in
// Zipkin leads to its log lines; lines outside any call carry none.
import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";

const kit = join(import.meta.dirname, "..");
const script = `
import { initTracing, tracer } from ${JSON.stringify(join(kit, "tracing.ts"))};
import { createLogger } from ${JSON.stringify(join(kit, "log.ts"))};
initTracing("log-test");
const log = createLogger("log-test");
log.info("outside");
tracer().startActiveSpan("call", (span) => {
  log.info("inside");
  console.error(JSON.stringify(span.spanContext()));
  span.end();
});
`;

describe("kit logger", () => {
  it("stamps the active span's trace and span id on every line logged inside it", async () => {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], { timeout: 30_000 });
    const lines = stdout.trim().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>);
    const span = JSON.parse(stderr.trim().split("\n").pop()!) as { traceId: string; spanId: string };
    expect(lines.map((l) => l.msg)).toEqual(["outside", "inside"]);
    expect(lines[0]).not.toHaveProperty("trace_id");
    expect(lines[1]).toMatchObject({ service: "log-test", trace_id: span.traceId, span_id: span.spanId });
    expect(span.traceId).toMatch(/^[0-9a-f]{32}$/);
  });
});
