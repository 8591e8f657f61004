import { appendFileSync, existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { mkdir, stat } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "../kit/index.js";
import type { ItemIndex, ItemUpsert } from "./item-index.js";

/** An accepted mutation, in the order it was applied. */
export type IndexOp = { seq: number; upsert: ItemUpsert[] } | { seq: number; delete: string[] };

interface SavedOp {
  seq: number;
  upsert?: { id: string; category: string; vector: string }[];
  delete?: string[];
}

export interface SavedSnapshot {
  dir: string;
  /** The last op the snapshot contains; later ops are replayed from the log. */
  seq: number;
  savedMs: number;
}

function encode(op: IndexOp): string {
  const saved: SavedOp =
    "upsert" in op
      ? {
          seq: op.seq,
          // base64 float32 keeps every bit of the vector and is 3x smaller than JSON numbers.
          upsert: op.upsert.map((item) => ({ id: item.itemId, category: item.category, vector: Buffer.from(item.vector.buffer, item.vector.byteOffset, item.vector.byteLength).toString("base64") })),
        }
      : { seq: op.seq, delete: op.delete };
  return `${JSON.stringify(saved)}\n`;
}

function decode(saved: SavedOp): IndexOp {
  if (saved.delete) return { seq: saved.seq, delete: saved.delete };
  return {
    seq: saved.seq,
    upsert: (saved.upsert ?? []).map((item) => {
      const bytes = Buffer.from(item.vector, "base64");
      return { itemId: item.id, category: item.category, vector: new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength)) };
    }),
  };
}

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
    const { snapshot, seq } = JSON.parse(readFileSync(this.currentFile, "utf8")) as { snapshot: string; seq: number };
    const dir = join(this.snapshotsDir, snapshot);
    if (!existsSync(dir)) return undefined;
    return { dir, seq, savedMs: (await stat(this.currentFile)).mtimeMs };
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
  commit(snapshotDir: string, seq: number): void {
    const ops = this.readOpsSync().filter((op) => op.seq > seq);
    const tmpOps = `${this.opsFile}.tmp`;
    writeFileSync(tmpOps, ops.map(encode).join(""));
    const tmpCurrent = `${this.currentFile}.tmp`;
    writeFileSync(tmpCurrent, JSON.stringify({ snapshot: snapshotDir.slice(this.snapshotsDir.length + 1), seq }));
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
