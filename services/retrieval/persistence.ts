import { appendFileSync, existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { mkdir, stat } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "../kit/index.js";
import type { ItemIndex, ItemUpsert } from "./item-index.js";

/** A mutation of the index. */
export type IndexOpBody = { upsert: ItemUpsert[] } | { delete: string[] };
/** An accepted mutation, numbered in the order it was applied. */
export type IndexOp = IndexOpBody & { seq: number };

interface SavedOpBody {
  upsert?: { id: string; category: string; vector: string }[];
  delete?: string[];
}
type SavedOp = SavedOpBody & { seq: number };

export interface SavedSnapshot {
  dir: string;
  /** The last op the snapshot contains; later ops are replayed from the log. */
  seq: number;
  /** With a replicated log: the id of the last stream entry the snapshot contains. */
  streamId?: string;
  savedMs: number;
}

function savedBody(op: IndexOpBody): SavedOpBody {
  if ("delete" in op) return { delete: op.delete };
  // base64 float32 keeps every bit of the vector and is 3x smaller than JSON numbers.
  return { upsert: op.upsert.map((item) => ({ id: item.itemId, category: item.category, vector: Buffer.from(item.vector.buffer, item.vector.byteOffset, item.vector.byteLength).toString("base64") })) };
}

function opBody(saved: SavedOpBody): IndexOpBody {
  if (saved.delete) return { delete: saved.delete };
  return {
    upsert: (saved.upsert ?? []).map((item) => {
      const bytes = Buffer.from(item.vector, "base64");
      return { itemId: item.id, category: item.category, vector: new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength)) };
    }),
  };
}

/** An op as one JSON text (the replicated log's entries). */
export const encodeOp = (op: IndexOpBody): string => JSON.stringify(savedBody(op));
export const decodeOp = (text: string): IndexOpBody => opBody(JSON.parse(text) as SavedOpBody);

const encode = (op: IndexOp): string => `${JSON.stringify({ seq: op.seq, ...savedBody(op) })}\n`;
const decode = (saved: SavedOp): IndexOp => ({ seq: saved.seq, ...opBody(saved) });

/**
 * What survives a restart, under <data dir>/<embeddings version>/: index snapshots
 * in snapshots/<index version>/, a CURRENT file naming the live one and the last op
 * it contains (replaced atomically by rename), and ops.jsonl, the log of every
 * upsert and delete accepted since, appended before the call is answered.
 */
export class IndexFiles {
  private readonly currentFile: string;
  private readonly opsFile: string;
  private readonly snapshotsDir: string;

  constructor(
    readonly dir: string,
    private readonly log: Logger,
  ) {
    this.currentFile = join(dir, "CURRENT");
    this.opsFile = join(dir, "ops.jsonl");
    this.snapshotsDir = join(dir, "snapshots");
    mkdirSync(this.snapshotsDir, { recursive: true });
  }

  /** The committed snapshot, if any. */
  async current(): Promise<SavedSnapshot | undefined> {
    if (!existsSync(this.currentFile)) return undefined;
    const { snapshot, seq, streamId } = JSON.parse(readFileSync(this.currentFile, "utf8")) as { snapshot: string; seq: number; streamId?: string };
    const dir = join(this.snapshotsDir, snapshot);
    if (!existsSync(dir)) return undefined;
    return { dir, seq, streamId, savedMs: (await stat(this.currentFile)).mtimeMs };
  }

  /** Writes index to a new snapshot directory; it becomes live only with commit(). */
  async write(index: ItemIndex): Promise<string> {
    const dir = join(this.snapshotsDir, index.version);
    await mkdir(dir, { recursive: true });
    await index.save(dir);
    return dir;
  }

  /**
   * Makes a written snapshot the live one and drops the ops it contains from the
   * log. Synchronous, so no append slips in between.
   */
  commit(snapshotDir: string, seq: number, streamId?: string): void {
    const ops = this.readOpsSync().filter((op) => op.seq > seq);
    const tmpOps = `${this.opsFile}.tmp`;
    writeFileSync(tmpOps, ops.map(encode).join(""));
    const tmpCurrent = `${this.currentFile}.tmp`;
    writeFileSync(tmpCurrent, JSON.stringify({ snapshot: snapshotDir.slice(this.snapshotsDir.length + 1), seq, streamId }));
    renameSync(tmpCurrent, this.currentFile);
    renameSync(tmpOps, this.opsFile);
    for (const name of readdirSync(this.snapshotsDir)) {
      const dir = join(this.snapshotsDir, name);
      if (dir !== snapshotDir) rmSync(dir, { recursive: true, force: true });
    }
  }

  append(op: IndexOp): void {
    appendFileSync(this.opsFile, encode(op));
  }

  /**
   * Logged ops after seq, in order. A torn last line (the process died mid-append)
   * is cut off the file, so the next append starts on a line of its own.
   */
  opsAfter(seq: number): IndexOp[] {
    return this.readOpsSync().filter((op) => op.seq > seq);
  }

  private readOpsSync(): IndexOp[] {
    if (!existsSync(this.opsFile)) return [];
    const lines = readFileSync(this.opsFile, "utf8").split("\n").filter((line) => line !== "");
    const ops: IndexOp[] = [];
    lines.forEach((line, i) => {
      try {
        ops.push(decode(JSON.parse(line) as SavedOp));
      } catch (err) {
        if (i !== lines.length - 1) throw new Error(`${this.opsFile}:${i + 1}: ${(err as Error).message}`);
        this.log.warn({ file: this.opsFile, line: i + 1 }, "dropping a torn last op (the process died while appending it)");
        writeFileSync(this.opsFile, ops.map(encode).join(""));
      }
    });
    return ops;
  }
}
