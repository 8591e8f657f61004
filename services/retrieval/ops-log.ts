// The replicated log of index writes: a Redis Stream per embeddings version that every
// retrieval replica appends its upserts and deletes to and applies, in stream order,
// from its snapshot's position on. Since every replica applies the same ops in the same
// order to the same starting index, they agree; the stream id a snapshot contains is
// saved with it, so a replica (re)starting from a snapshot replays only what came after.
import type { Logger } from "../kit/index.js";
import { closeRedis, createRedis, type RedisClient, type RedisSettings } from "../kit/redis.js";
import { decodeOp, encodeOp, type IndexOpBody } from "./persistence.js";

export interface StreamEntry {
  id: string;
  op: IndexOpBody;
}

/** The stream of one embeddings version (one key: one Cluster slot). */
export const opsStreamKey = (embeddingsVersion: string) => `{recsys:retrieval:${embeddingsVersion}}:ops`;

/** -1, 0 or 1 as stream id a is before, equal to or after b. */
export function compareIds(a: string, b: string): number {
  const [aMs, aSeq] = a.split("-").map(BigInt) as [bigint, bigint];
  const [bMs, bSeq] = b.split("-").map(BigInt) as [bigint, bigint];
  if (aMs !== bMs) return aMs < bMs ? -1 : 1;
  return aSeq === bSeq ? 0 : aSeq < bSeq ? -1 : 1;
}

type XReadReply = [key: string, entries: [id: string, fields: string[]][]][] | null;

export class OpsStream {
  /** Appends: fails fast. */
  private readonly writer: RedisClient;
  /** Blocking reads need a connection of their own, with a timeout longer than the block. */
  private readonly reader: RedisClient;

  constructor(
    settings: RedisSettings,
    readonly key: string,
    private readonly options: { commandTimeoutMs: number; blockMs: number; log: Logger },
  ) {
    this.writer = createRedis(settings, { commandTimeoutMs: options.commandTimeoutMs, name: "retrieval-ops-writer", log: options.log });
    this.reader = createRedis(settings, { commandTimeoutMs: options.commandTimeoutMs + options.blockMs, name: "retrieval-ops-reader" });
  }

  /** Appends an op; resolves with its stream id once Redis has it. */
  async append(op: IndexOpBody): Promise<string> {
    const id = await this.writer.xadd(this.key, "*", "op", encodeOp(op));
    return id!;
  }

  /** Entries after id, oldest first: at most count, waiting up to blockMs for one when blockMs is given. */
  async readAfter(id: string, count: number, blockMs?: number): Promise<StreamEntry[]> {
    const reply = (
      blockMs === undefined
        ? await this.reader.xread("COUNT", count, "STREAMS", this.key, id)
        : await this.reader.xread("COUNT", count, "BLOCK", blockMs, "STREAMS", this.key, id)
    ) as XReadReply;
    return (reply?.[0]?.[1] ?? []).map(([entryId, fields]) => ({ id: entryId, op: decodeOp(fields[fields.indexOf("op") + 1]!) }));
  }

  async close(): Promise<void> {
    await Promise.all([closeRedis(this.writer), closeRedis(this.reader, { immediately: true })]);
  }
}
