// The training pipeline's artifacts that more than one service reads: the embeddings
// (retrieval indexes them, prediction ranks with them) and the item catalogue (the
// feature service seeds the popular lists and item categories from it, retrieval and
// prediction fall back to its static popularity). One reader each, one set of rules.
import { createHash } from "node:crypto";
import { readFile, stat } from "node:fs/promises";
import { endianness } from "node:os";
import { join } from "node:path";
import { z } from "zod";
import { ALL_CATEGORIES } from "./ranked-lists.js";

/** The trained embeddings of one kind (items or users): ids and their vectors, row by row. */
export interface EmbeddingTable {
  ids: string[];
  /** ids.length x dim, row-major. */
  vectors: Float32Array;
  rowOf: Map<string, number>;
}

export interface EmbeddingArtifacts {
  dir: string;
  dim: number;
  items: EmbeddingTable;
  users: EmbeddingTable;
}

export interface CatalogItem {
  itemId: string;
  category: string;
  popularity: number;
}

/** Categories become Redis key names and list names; ALL_CATEGORIES names the list of every item. */
export const CATEGORY_PATTERN = /^[A-Za-z0-9_.-]{1,64}$/;

export class ArtifactError extends Error {
  override name = "ArtifactError";
}

const manifestSchema = z.looseObject({
  kind: z.literal("embeddings"),
  dim: z.number().int().min(1).max(4096),
  /** Hex sha256 of each binary, by file name ("items.f32"); checked when present. */
  sha256: z.record(z.string(), z.string()).optional(),
});

const allFiles = ["manifest.json", "item_ids.txt", "users.f32", "user_ids.txt", "items.f32"];

/** The newest modification time of the embedding files, or undefined when any is missing. */
export async function embeddingsModifiedMs(dir: string): Promise<number | undefined> {
  try {
    const stats = await Promise.all(allFiles.map((file) => stat(join(dir, file))));
    return Math.max(...stats.map((s) => s.mtimeMs));
  } catch {
    return undefined;
  }
}

async function readIds(path: string): Promise<string[]> {
  const ids = (await readFile(path, "utf8")).split("\n").map((line) => line.trim());
  while (ids.length > 0 && ids.at(-1) === "") ids.pop();
  return ids;
}

async function readTable(dir: string, kind: "items" | "users", dim: number, sha256: Record<string, string> | undefined): Promise<EmbeddingTable> {
  const idsFile = join(dir, kind === "items" ? "item_ids.txt" : "user_ids.txt");
  const vectorsFile = join(dir, `${kind}.f32`);
  const ids = await readIds(idsFile);
  const bytes = await readFile(vectorsFile);
  const expected = sha256?.[`${kind}.f32`];
  if (expected && createHash("sha256").update(bytes).digest("hex") !== expected.toLowerCase()) {
    throw new ArtifactError(`${vectorsFile}: sha256 differs from the manifest`);
  }
  if (bytes.byteLength !== ids.length * dim * 4) {
    throw new ArtifactError(`${vectorsFile}: ${bytes.byteLength} bytes, expected ${ids.length} ids x ${dim} dims x 4`);
  }
  // Float32Array needs 4-byte alignment; a Buffer from the pool may not have it.
  const aligned = bytes.byteOffset % 4 === 0 ? bytes : Buffer.from(bytes);
  const vectors = new Float32Array(aligned.buffer, aligned.byteOffset, ids.length * dim);
  const rowOf = new Map<string, number>();
  ids.forEach((id, row) => {
    if (id === "") throw new ArtifactError(`${idsFile}:${row + 1}: empty id`);
    if (rowOf.has(id)) throw new ArtifactError(`${idsFile}:${row + 1}: duplicate id ${JSON.stringify(id)}`);
    rowOf.set(id, row);
  });
  for (let i = 0; i < vectors.length; i++) {
    if (!Number.isFinite(vectors[i])) throw new ArtifactError(`${vectorsFile}: row ${Math.floor(i / dim)} has a non-finite value`);
  }
  return { ids, vectors, rowOf };
}

/**
 * Reads models/embeddings/<version>/: manifest.json (kind "embeddings", dim, optional
 * sha256 per binary), items.f32 + item_ids.txt, users.f32 + user_ids.txt (little-endian
 * float32, row-major, one id per line in row order). Any inconsistency fails the start.
 */
export async function readEmbeddings(dir: string): Promise<EmbeddingArtifacts> {
  if (endianness() !== "LE") throw new ArtifactError("embeddings are little-endian float32; this host is big-endian");
  const manifestPath = join(dir, "manifest.json");
  let raw: unknown;
  try {
    raw = JSON.parse(await readFile(manifestPath, "utf8"));
  } catch (err) {
    throw new ArtifactError(`${manifestPath}: ${(err as Error).message}`);
  }
  const manifest = manifestSchema.safeParse(raw);
  if (!manifest.success) throw new ArtifactError(`${manifestPath}: ${z.prettifyError(manifest.error)}`);
  const { dim, sha256 } = manifest.data;
  const [items, users] = await Promise.all([readTable(dir, "items", dim, sha256), readTable(dir, "users", dim, sha256)]);
  return { dir, dim, items, users };
}

/** One catalogue line, {"item_id","category","popularity","created_at"}, or what is wrong with it. */
export function parseCatalogLine(line: string): CatalogItem | { error: string } {
  let raw: unknown;
  try {
    raw = JSON.parse(line);
  } catch {
    return { error: "not valid JSON" };
  }
  const { item_id, category, popularity } = (raw ?? {}) as Record<string, unknown>;
  if (typeof item_id !== "string" || item_id.length === 0 || item_id.length > 128) return { error: "item_id: expected a string of 1-128 characters" };
  if (typeof category !== "string" || !CATEGORY_PATTERN.test(category) || category === ALL_CATEGORIES) {
    return { error: `category: expected ${CATEGORY_PATTERN} other than "${ALL_CATEGORIES}", got ${JSON.stringify(category)}` };
  }
  if (typeof popularity !== "number" || !Number.isFinite(popularity) || popularity < 0) return { error: "popularity: expected a number >= 0" };
  return { itemId: item_id, category, popularity };
}

/** Reads a catalogue (models/catalog/<version>/items.jsonl): one item per line (parseCatalogLine); any bad line fails. */
export async function readCatalog(path: string): Promise<CatalogItem[]> {
  const text = await readFile(path, "utf8").catch((err: Error) => {
    throw new ArtifactError(`${path}: ${err.message}`);
  });
  const items: CatalogItem[] = [];
  text.split("\n").forEach((line, i) => {
    if (line.trim() === "") return;
    const item = parseCatalogLine(line);
    if ("error" in item) throw new ArtifactError(`${path}:${i + 1}: ${item.error}`);
    items.push(item);
  });
  return items;
}
