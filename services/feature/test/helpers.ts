import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { Client } from "@connectrpc/connect";
import type { EventType, FeatureValue } from "../../../gen/recsys/common/v1/common_pb.js";
import type { EventSchema, FeatureResult, FeatureService } from "../../../gen/recsys/feature/v1/feature_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { runCommand } from "../../../scripts/lib/processes.js";
import { tool } from "../../../scripts/lib/tools.js";

export type EventInit = MessageInitShape<typeof EventSchema>;

/** An event `offsetS` seconds from `now`. */
export function event(id: string, userId: string, itemId: string, type: EventType, now: number, offsetS: number, category = ""): EventInit {
  return { eventId: id, userId, itemId, type, timestamp: timestampFromMs(now + offsetS * 1000), category };
}

/** A wire value as plain data, for comparisons: int64 as number, lists and maps unwrapped. */
export function plain(value: FeatureValue | undefined): unknown {
  const kind = value?.kind;
  switch (kind?.case) {
    case "int64Value":
      return Number(kind.value);
    case "floatList":
    case "stringList":
      return kind.value.values;
    case "doubleMap":
      return kind.value.values;
    default:
      return kind?.value;
  }
}

export function plainFeatures(features: Record<string, FeatureResult>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(features).map(([ref, r]) => [ref, plain(r.value)]));
}

/** A user's (or item's) features as plain values, read through the service. */
export async function readOne(client: Client<typeof FeatureService>, kind: "user" | "item", id: string, refs: string[] = []) {
  const response = await client.getOnlineFeatures(kind === "user" ? { userIds: [id], featureRefs: refs } : { itemIds: [id], featureRefs: refs });
  const entity = (kind === "user" ? response.users : response.items)[0]!;
  return { values: plainFeatures(entity.features), results: entity.features };
}

/** Retries an assertion until it passes (stream features appear within about a second). */
export async function eventually<T>(check: () => Promise<T>, timeoutMs = 5_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await check();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

export async function scrape(port: number): Promise<string> {
  return (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
}

/** Sum of a metric's samples whose labels contain every given label. */
export function metric(text: string, name: string, labels: Record<string, string> = {}): number {
  let total = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) total += Number(line.split(" ").pop());
  }
  return total;
}

/** Health of the server on this port, as grpc-health-probe reports it. */
export async function healthProbe(port: number): Promise<{ serving: boolean; output: string }> {
  const { code, stdout, stderr } = await runCommand(tool("grpc-health-probe"), [`-addr=127.0.0.1:${port}`]);
  return { serving: code === 0, output: stdout + stderr };
}

/** Resolves once the server reports SERVING (Redis reachable). */
export function serving(port: number, timeoutMs = 10_000): Promise<void> {
  return eventually(async () => {
    if (!(await healthProbe(port)).serving) throw new Error(`127.0.0.1:${port} is not SERVING`);
  }, timeoutMs);
}
