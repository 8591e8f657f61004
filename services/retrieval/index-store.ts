import type { Logger } from "../kit/index.js";
import { ItemIndex, newIndexVersion, type HnswParams, type ItemRows, type ItemUpsert } from "./item-index.js";
import { observeIndex, rebuildReplayedOps, rebuildSeconds } from "./metrics.js";
import { IndexFiles, type IndexOp } from "./persistence.js";

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
}

function apply(index: ItemIndex, op: IndexOp): void {
  if ("upsert" in op) index.upsert(op.upsert);
  else index.delete(op.delete);
}

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
 */
export class IndexStore {
  private rebuilding?: { pending: IndexOp[]; result: Promise<RebuildResult> };

  private constructor(
    private live: ItemIndex,
    /** The last op applied. */
    private seq: number,
    private readonly files: IndexFiles,
    private readonly options: OpenOptions,
  ) {
    observeIndex(live);
  }

  static async open(options: OpenOptions): Promise<IndexStore> {
    const { log } = options;
    const files = new IndexFiles(options.dataDir, log);
    const saved = await files.current();
    if (saved && saved.savedMs >= options.artifactsModifiedMs) {
      const index = await ItemIndex.load(saved.dir, options.params.efSearch);
      if (index.dim !== options.dim) throw new Error(`${saved.dir}: saved index has dimension ${index.dim}, the artifacts ${options.dim}`);
      const ops = files.opsAfter(saved.seq);
      for (const op of ops) apply(index, op);
      log.info({ version: index.version, items: index.size, replayedOps: ops.length, dir: saved.dir }, "index loaded from its saved snapshot");
      return new IndexStore(index, ops.at(-1)?.seq ?? saved.seq, files, options);
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
    files.commit(await files.write(index), seq);
    log.info({ version: index.version, items: index.size, buildMs: Math.round(performance.now() - started) }, "index built from the artifacts");
    return new IndexStore(index, seq, files, options);
  }

  /** The live index. Read it once per call and use that object throughout. */
  get index(): ItemIndex {
    return this.live;
  }

  /** Logs, then applies; searchable when this returns. */
  upsert(items: ItemUpsert[]): { inserted: number; updated: number } {
    const op = { seq: this.seq + 1, upsert: items };
    this.files.append(op);
    this.seq = op.seq;
    this.rebuilding?.pending.push(op);
    const result = this.live.upsert(items);
    observeIndex(this.live);
    return result;
  }

  /** Logs, then applies; never returned again when this returns. */
  delete(itemIds: string[]): { deleted: number; notFound: number } {
    const op = { seq: this.seq + 1, delete: itemIds };
    this.files.append(op);
    this.seq = op.seq;
    this.rebuilding?.pending.push(op);
    const result = this.live.delete(itemIds);
    observeIndex(this.live);
    return result;
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
      if (snapshotDir) this.commitQuietly(snapshotDir, seqAtStart);
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
  private commitQuietly(snapshotDir: string, seq: number): void {
    try {
      this.files.commit(snapshotDir, seq);
    } catch (err) {
      this.options.log.error({ err }, "could not commit the rebuilt index's snapshot; serving it from memory");
    }
  }
}
