// The outcome stream: the clicks and purchases the feature service accepted, in one
// capped Redis Stream, for whoever joins outcomes with what was served (prediction's
// online accuracy). The feature service writes it; readers follow it from "now" on.
// One definition, since the key and the entry format are the contract.
//
// It is a monitoring feed, not the event log: the partitioned event streams stay the
// record (deduplicated, durable, read by the aggregator). An outcome published twice
// (a resent batch) marks the same served item twice, which is idempotent, and one lost
// to a Redis fault is a missing click in a sampled statistic, so it is published after
// the events are accepted and its failures never fail the ingest.
import { EventType } from "../../gen/recsys/common/v1/common_pb.js";
import type { Logger } from "./log.js";
import { closeRedis, createRedis, type RedisClient, type RedisSettings } from "./redis.js";

/** One key, so one Cluster slot. */
export const OUTCOMES_STREAM_KEY = "{recsys:outcomes}";
/** Entries kept, approximately (MAXLEN ~): minutes of clicks at any rate a reader keeps up with. */
export const OUTCOMES_MAX_ENTRIES = 100_000;

/** Event types that are outcomes of a served item (training labels a click; a purchase follows one). */
const OUTCOME_TYPES: ReadonlySet<EventType> = new Set([EventType.CLICK, EventType.PURCHASE]);

export interface Outcome {
  userId: string;
  itemId: string;
  atMs: number;
}

/** The outcomes among accepted events (only those are converted: most events are views). */
export function outcomesOf<E extends { userId: string; itemId: string; type: EventType }>(events: readonly E[], atMs: (event: E) => number): Outcome[] {
  return events.filter((e) => OUTCOME_TYPES.has(e.type)).map((e) => ({ userId: e.userId, itemId: e.itemId, atMs: atMs(e) }));
}

/** Appends outcomes to the stream, in one round trip. */
export async function publishOutcomes(redis: RedisClient, outcomes: readonly Outcome[]): Promise<void> {
  if (outcomes.length === 0) return;
  const pipeline = redis.pipeline();
  for (const o of outcomes) pipeline.xadd(OUTCOMES_STREAM_KEY, "MAXLEN", "~", OUTCOMES_MAX_ENTRIES, "*", "u", o.userId, "i", o.itemId, "t", o.atMs);
  const results = (await pipeline.exec()) ?? [];
  const failed = results.find(([err]) => err);
  if (failed) throw failed[0];
}

type XReadReply = [key: string, entries: [id: string, fields: string[]][]][] | null;

/**
 * Follows the stream from the moment it starts, handing each outcome to onOutcome.
 * A blocking read needs a connection of its own; while Redis is away it retries
 * every second and resumes after the last entry it saw (entries trimmed meanwhile
 * are skipped: the feed is a sample, not a ledger).
 */
export class OutcomeFeed {
  private readonly redis: RedisClient;
  private stopped = false;
  private failing = false;
  private markReady!: () => void;
  /** Resolves once the feed knows where the stream ends: every outcome published after it is delivered. */
  readonly ready = new Promise<void>((resolve) => (this.markReady = resolve));
  private readonly done: Promise<void>;

  constructor(
    settings: RedisSettings,
    private readonly onOutcome: (outcome: Outcome) => void,
    private readonly options: { blockMs?: number; commandTimeoutMs: number; log: Logger },
  ) {
    const blockMs = options.blockMs ?? 1_000;
    this.redis = createRedis(settings, { commandTimeoutMs: options.commandTimeoutMs + blockMs, name: "outcome-feed" });
    this.done = this.follow(blockMs);
  }

  private async follow(blockMs: number): Promise<void> {
    let last: string | undefined;
    while (!this.stopped) {
      try {
        if (last === undefined) {
          const [newest] = await this.redis.xrevrange(OUTCOMES_STREAM_KEY, "+", "-", "COUNT", 1);
          last = newest?.[0] ?? "0-0";
          this.markReady();
        }
        const reply = (await this.redis.xread("COUNT", 1_000, "BLOCK", blockMs, "STREAMS", OUTCOMES_STREAM_KEY, last)) as XReadReply;
        this.recovered();
        for (const [id, fields] of reply?.[0]?.[1] ?? []) {
          last = id;
          const field = (name: string) => fields[fields.indexOf(name) + 1]!;
          this.onOutcome({ userId: field("u"), itemId: field("i"), atMs: Number(field("t")) });
        }
      } catch (err) {
        if (this.stopped) break;
        if (!this.failing) this.options.log.warn({ err: (err as Error).message }, "outcome feed: read failed; retrying every second");
        this.failing = true;
        await new Promise((resolve) => setTimeout(resolve, 1_000));
      }
    }
  }

  private recovered(): void {
    if (this.failing) this.options.log.info("outcome feed reading again");
    this.failing = false;
  }

  async close(): Promise<void> {
    this.stopped = true;
    // Blocked in XREAD: a QUIT would wait for the block to end.
    await closeRedis(this.redis, { immediately: true });
    await this.done;
  }
}
