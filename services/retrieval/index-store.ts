import { setTimeout as sleep } from "node:timers/promises";
import { Code, Reason, statusError, type Logger } from "../kit/index.js";
import { ItemIndex, newIndexVersion, type HnswParams, type ItemRows, type ItemUpsert } from "./item-index.js";
import { observeIndex, rebuildReplayedOps, rebuildSeconds, replicatedOpsApplied } from "./metrics.js";
import { compareIds, type OpsStream, type StreamEntry } from "./ops-log.js";
import { IndexFiles, type IndexOp, type IndexOpBody } from "./persistence.js";

type UpsertResult = { inserted: number; updated: number };
type DeleteResult = { deleted: number; notFound: number };
type OpResult = UpsertResult | DeleteResult;

export interface Replication {
  stream: OpsStream;
  /** How long a write waits for this replica to apply it before answering UNAVAILABLE (it stays logged). */
  applyWaitMs: number;
  /** How long one blocking read of the stream waits for new entries. */
  blockMs: number;
}

export interface RebuildResult {
  previousVersion: string;
  version: string;
  size: number;
  buildMs: number;
}

export interface OpenOptions {
  /** <data dir>/<embeddings version>. */
  dataDir: string;
  /** Prefix of index versions: the embeddings version. */
  versionPrefix: string;
  dim: number;
  params: HnswParams;
  /** When the artifacts were last written; a saved index older than this is ignored. */
  artifactsModifiedMs: number;
  /** The artifacts' items, read only when the index is built from them. */
  artifactRows: () => ItemRows;
  log: Logger;
  /** Writes go through a replicated log every replica applies; without it, through this process's file log. */
  replication?: Replication;
}

function apply(index: ItemIndex, op: IndexOpBody): OpResult {
  return "upsert" in op ? index.upsert(op.upsert) : index.delete(op.delete);
}

/** Results of this replica's latest stream entries, kept for writers whose XADD answer came after the entry was applied. */
const RECENT_RESULTS = 1_000;
/** Entries read from the stream per call. */
const READ_COUNT = 500;

/**
 * The live index and its life: built from the artifacts or loaded from the newer
 * saved snapshot at start, mutated by logged upserts and deletes, and rebuilt in
 * the background then swapped in atomically.
 *
 * Swapping is one assignment. A call reads `index` once and keeps that object for
 * its whole duration, so searches in flight finish on the old index, which is
 * freed by GC when the last of them lets go. Ops accepted during a rebuild are
 * applied to the old index at once and replayed on the new one right before the
 * swap, in the same synchronous step, so none is lost.
 *
 * With replication, a write is appended to the shared stream and answered once this
 * replica has applied it; every replica applies every entry in stream order, so ops
 * from all replicas land in the same order everywhere. The stream is the log then:
 * the file log stays empty and a snapshot records the last stream id it contains.
 */
export class IndexStore {
  private rebuilding?: { pending: IndexOp[]; result: Promise<RebuildResult> };
  /** With replication: writers waiting for their entry to be applied here, by stream id. */
  private readonly waiting = new Map<string, (result: OpResult) => void>();
  private readonly recentResults = new Map<string, OpResult>();
  private readonly stopped = new AbortController();
  private tailing: Promise<void> | undefined;
  /** Failed reads of the replicated log in a row. */
  private logFailures = 0;

  private constructor(
    private live: ItemIndex,
    /** The last op applied. */
    private seq: number,
    /** With replication: the id of the last stream entry applied. */
    private streamId: string,
    private readonly files: IndexFiles,
    private readonly options: OpenOptions,
  ) {
    observeIndex(live);
  }

  /**
   * Loads the saved snapshot (or builds from the artifacts) and, with replication,
   * applies every stream entry after the snapshot's position before resolving, then
   * keeps applying new ones in the background.
   */
  static async open(options: OpenOptions): Promise<IndexStore> {
    const store = await IndexStore.load(options);
    if (options.replication) {
      await store.catchUp();
      store.tailing = store.tail(options.replication);
    }
    return store;
  }

  private static async load(options: OpenOptions): Promise<IndexStore> {
    const { log } = options;
    const files = new IndexFiles(options.dataDir, log);
    const saved = await files.current();
    if (saved && saved.savedMs >= options.artifactsModifiedMs) {
      const index = await ItemIndex.load(saved.dir, options.params.efSearch);
      if (index.dim !== options.dim) throw new Error(`${saved.dir}: saved index has dimension ${index.dim}, the artifacts ${options.dim}`);
      const ops = files.opsAfter(saved.seq);
      for (const op of ops) apply(index, op);
      log.info({ version: index.version, items: index.size, replayedOps: ops.length, dir: saved.dir, streamId: saved.streamId }, "index loaded from its saved snapshot");
      return new IndexStore(index, ops.at(-1)?.seq ?? saved.seq, saved.streamId ?? "0-0", files, options);
    }

    // The artifacts are newer (a new training run): ops logged against the old index
    // were in the old embedding space, so they are dropped with the snapshot.
    const stale = files.opsAfter(saved?.seq ?? 0);
    if (stale.length > 0) log.warn({ ops: stale.length }, "the artifacts are newer than the saved index: dropping the upserts and deletes logged against it");
    const started = performance.now();
    const index = await ItemIndex.build(options.artifactRows(), options.dim, options.params, {
      version: newIndexVersion(options.versionPrefix),
      origin: "artifacts",
    });
    const seq = stale.at(-1)?.seq ?? saved?.seq ?? 0;
    // With replication the stream holds this embeddings version's writes from its start: all of them apply to the fresh build.
    files.commit(await files.write(index), seq, options.replication ? "0-0" : undefined);
    log.info({ version: index.version, items: index.size, buildMs: Math.round(performance.now() - started) }, "index built from the artifacts");
    return new IndexStore(index, seq, "0-0", files, options);
  }

  /** Stops applying the replicated log. */
  async close(): Promise<void> {
    this.stopped.abort();
    await Promise.all([this.options.replication?.stream.close(), this.tailing]);
  }

  /** The live index. Read it once per call and use that object throughout. */
  get index(): ItemIndex {
    return this.live;
  }

  /** Logs, then applies; searchable here when this resolves (on the other replicas a moment later). */
  async upsert(items: ItemUpsert[]): Promise<UpsertResult> {
    return (await this.write({ upsert: items })) as UpsertResult;
  }

  /** Logs, then applies; never returned again here when this resolves (on the other replicas a moment later). */
  async delete(itemIds: string[]): Promise<DeleteResult> {
    return (await this.write({ delete: itemIds })) as DeleteResult;
  }

  private async write(op: IndexOpBody): Promise<OpResult> {
    const replication = this.options.replication;
    if (!replication) {
      const logged = { seq: this.seq + 1, ...op };
      this.files.append(logged);
      return this.applyLocally(logged);
    }
    let id: string;
    try {
      id = await replication.stream.append(op);
    } catch (err) {
      throw statusError(Code.Unavailable, Reason.IndexLogUnavailable, `the replicated index log (Redis) is unavailable; nothing was written: ${(err as Error).message}`);
    }
    const done = this.recentResults.get(id);
    if (done) return done;
    return new Promise<OpResult>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(statusError(Code.Unavailable, Reason.IndexLogLagging, `logged as ${id} but not applied by this replica within ${replication.applyWaitMs} ms; it will be`));
      }, replication.applyWaitMs);
      this.waiting.set(id, (result) => {
        clearTimeout(timer);
        resolve(result);
      });
    });
  }

  private applyLocally(op: IndexOp): OpResult {
    this.seq = op.seq;
    this.rebuilding?.pending.push(op);
    const result = apply(this.live, op);
    observeIndex(this.live);
    return result;
  }

  /** Applies a stream entry (in stream order) and answers the writer waiting for it, if it is here. */
  private applyEntry({ id, op }: StreamEntry): void {
    if (compareIds(id, this.streamId) <= 0) return;
    const result = this.applyLocally({ seq: this.seq + 1, ...op });
    this.streamId = id;
    replicatedOpsApplied.inc();
    this.recentResults.set(id, result);
    if (this.recentResults.size > RECENT_RESULTS) this.recentResults.delete(this.recentResults.keys().next().value!);
    const writer = this.waiting.get(id);
    if (writer) {
      this.waiting.delete(id);
      writer(result);
    }
  }

  /**
   * Applies every entry already in the stream: the replica is not ready before, so it
   * waits (retrying) for a Redis that is not there yet.
   */
  private async catchUp(): Promise<void> {
    const { stream } = this.options.replication!;
    let caughtUp = false;
    while (!caughtUp && !this.stopped.signal.aborted) {
      await this.readingLog(async () => {
        const entries = await stream.readAfter(this.streamId, READ_COUNT);
        for (const entry of entries) this.applyEntry(entry);
        caughtUp = entries.length < READ_COUNT;
      });
    }
  }

  /** Applies new entries as they come. */
  private async tail({ stream, blockMs }: Replication): Promise<void> {
    while (!this.stopped.signal.aborted) {
      await this.readingLog(async () => {
        for (const entry of await stream.readAfter(this.streamId, READ_COUNT, blockMs)) this.applyEntry(entry);
      });
    }
  }

  /** One read of the log; a failing Redis is logged once per outage and retried after a growing pause. */
  private async readingLog(read: () => Promise<void>): Promise<void> {
    try {
      await read();
      if (this.logFailures > 0) this.options.log.info({ streamId: this.streamId }, "replicated index log readable again");
      this.logFailures = 0;
    } catch (err) {
      if (this.stopped.signal.aborted) return;
      if (this.logFailures++ === 0) this.options.log.warn({ err: (err as Error).message }, "cannot read the replicated index log; retrying");
      await sleep(Math.min(100 * this.logFailures, 2_000), undefined, { signal: this.stopped.signal }).catch(() => undefined);
    }
  }

  /** Compacts the live items into a fresh index and swaps it in. A call during a rebuild joins it. */
  rebuild(): Promise<RebuildResult> {
    if (!this.rebuilding) {
      const pending: IndexOp[] = [];
      this.rebuilding = { pending, result: this.runRebuild(pending) };
    }
    return this.rebuilding.result;
  }

  private async runRebuild(pending: IndexOp[]): Promise<RebuildResult> {
    const { log } = this.options;
    const started = performance.now();
    const previous = this.live;
    const seqAtStart = this.seq;
    const streamIdAtStart = this.streamId;
    try {
      const next = await ItemIndex.build(previous.liveRows(), previous.dim, this.options.params, {
        version: newIndexVersion(this.options.versionPrefix),
        origin: "rebuild",
      });
      const snapshotDir = await this.files.write(next).catch((err: unknown) => {
        log.error({ err }, "could not save the rebuilt index; serving it from memory");
        return undefined;
      });
      // Synchronous from here to the swap: no op can arrive in between.
      for (const op of pending) apply(next, op);
      if (snapshotDir) this.commitQuietly(snapshotDir, seqAtStart, streamIdAtStart);
      this.live = next;
      observeIndex(next);
      const buildMs = performance.now() - started;
      rebuildSeconds.observe(buildMs / 1000);
      rebuildReplayedOps.inc(pending.length);
      log.info({ previousVersion: previous.version, version: next.version, items: next.size, replayedOps: pending.length, buildMs: Math.round(buildMs) }, "index rebuilt and swapped in");
      return { previousVersion: previous.version, version: next.version, size: next.size, buildMs };
    } finally {
      this.rebuilding = undefined;
    }
  }

  /** A failed save keeps the old snapshot and the whole op log committed, so a restart loses nothing. */
  private commitQuietly(snapshotDir: string, seq: number, streamId: string): void {
    try {
      this.files.commit(snapshotDir, seq, this.options.replication ? streamId : undefined);
    } catch (err) {
      this.options.log.error({ err }, "could not commit the rebuilt index's snapshot; serving it from memory");
    }
  }
}
