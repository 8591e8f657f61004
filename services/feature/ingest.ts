// Event ingestion: the semantic checks protovalidate cannot express, and the atomic,
// deduplicating append to the partitioned event stream.
import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { Event } from "../../gen/recsys/feature/v1/feature_pb.js";
import { invalidArgument } from "../kit/index.js";
import type { StreamEvent } from "./aggregation.js";
import { partitionOf, seenKey, streamKey } from "./keys.js";
import type { RedisClient } from "../kit/redis.js";
import { execAll } from "./redis.js";

/**
 * Rejects the batch (INVALID_ARGUMENT naming the first bad event's index and field)
 * unless every event passes; nothing of a rejected batch is appended. Old events are
 * accepted: the aggregator counts them in the windows they fall in, or in nothing.
 */
export function checkEvents(events: readonly Event[], now: number, maxFutureMs: number, where = ""): void {
  events.forEach((event, i) => {
    const ts = timestampMs(event.timestamp!);
    if (ts > now + maxFutureMs) {
      throw invalidArgument(
        `events[${i}].timestamp`,
        `${new Date(ts).toISOString()} is more than ${maxFutureMs / 1000} s ahead of the server clock${where}`,
      );
    }
  });
}

/** The stream entry of an event: what the aggregator needs, compact. */
export function encodeEvent(event: Event): string {
  return JSON.stringify({ id: event.eventId, u: event.userId, i: event.itemId, t: event.type, ts: timestampMs(event.timestamp!), c: event.category });
}

/** A stream entry back as an event; its category may be empty (resolved by the aggregator). */
export function decodeEvent(payload: string): StreamEvent {
  const e = JSON.parse(payload) as { id: string; u: string; i: string; t: number; ts: number; c: string };
  return { id: e.id, userId: e.u, itemId: e.i, type: e.t, ts: e.ts, category: e.c };
}

export interface Durability {
  /** Replicas that must hold a partition's share before it counts as accepted (0: the master alone). */
  replicaAcks: number;
  /** How long to wait for them. */
  waitMs: number;
}

/**
 * Appends events whose id has not been seen within the dedupe TTL. Each partition's
 * share is one script: appended all together or not at all. A batch spanning
 * partitions that fails half way is safe to resend whole: the appended half now
 * counts as duplicates. With replicaAcks, each share is followed by WAIT on the same
 * node (one pipeline: a keyless command goes where the pipeline's keys go): Redis
 * replicates asynchronously, so a master that dies right after answering could take
 * an accepted event with it; a share the replicas have not confirmed in time fails
 * the call (UNAVAILABLE), and the resend is deduplicated.
 */
export async function appendEvents(
  redis: RedisClient,
  events: readonly Event[],
  partitions: number,
  dedupeTtlSeconds: number,
  durability: Durability = { replicaAcks: 0, waitMs: 0 },
): Promise<{ accepted: number; duplicates: number }> {
  const byPartition = new Map<number, Event[]>();
  for (const event of events) {
    const p = partitionOf(event.itemId, partitions);
    const list = byPartition.get(p);
    if (list) list.push(event);
    else byPartition.set(p, [event]);
  }
  const append = async (p: number, list: Event[]): Promise<[number, number]> => {
    const args = [streamKey(p), ...list.map((e) => seenKey(p, e.eventId)), String(dedupeTtlSeconds), ...list.map(encodeEvent)] as const;
    if (durability.replicaAcks === 0) return redis.recsysIngestEvents(1 + list.length, ...args);
    const [counts, acks] = (await execAll(redis.pipeline().recsysIngestEvents(1 + list.length, ...args).wait(durability.replicaAcks, durability.waitMs))) as [
      [number, number],
      number,
    ];
    if (acks < durability.replicaAcks) throw new Error(`${acks} of ${durability.replicaAcks} replicas acknowledged the events within ${durability.waitMs} ms`);
    return counts;
  };
  const results = await Promise.all([...byPartition].map(([p, list]) => append(p, list)));
  return results.reduce((sum, [accepted, duplicates]) => ({ accepted: sum.accepted + accepted, duplicates: sum.duplicates + duplicates }), {
    accepted: 0,
    duplicates: 0,
  });
}
