// The retrieval service's pure logic and file formats, in process.
import { appendFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { CandidateSource } from "../../../gen/recsys/retrieval/v1/retrieval_pb.js";
import { createLogger } from "../../kit/index.js";
import { readEmbeddings } from "../../kit/artifacts.js";
import { fuseCandidates, interleave, RRF_K } from "../candidates.js";
import { ItemIndex, normalize } from "../item-index.js";
import { IndexFiles } from "../persistence.js";
import { TopK } from "../top-k.js";
import { tempDir } from "./helpers.js";
import { seededRandom, syntheticCatalogue, writeModels } from "./synthetic.js";

const dir = tempDir("logic");
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const log = createLogger("retrieval-test", "silent");
const params = { m: 8, efConstruction: 50, efSearch: 50 };
const noFilter = { includeCategories: [], excludeCategories: [], excludeItemIds: [] };

describe("TopK", () => {
  it("keeps exactly the k best of a stream, best first", () => {
    const random = seededRandom(5);
    const scores = Array.from({ length: 5000 }, () => random());
    const top = new TopK(25);
    scores.forEach((score, label) => top.push(score, label));
    const expected = scores.map((score, label) => ({ label, score })).sort((a, b) => b.score - a.score).slice(0, 25);
    expect(top.sorted()).toEqual(expected);
  });
});

describe("candidate fusion", () => {
  const item = (itemId: string, score = 1) => ({ itemId, category: "c", score });

  it("interleaves one source's lists by rank, each item once", () => {
    expect(interleave([[item("a"), item("b"), item("c")], [item("x"), item("a"), item("y")]]).map((i) => i.itemId)).toEqual(["a", "x", "b", "c", "y"]);
  });

  it("orders by reciprocal rank fusion and keeps each source's own score", () => {
    const merged = fuseCandidates(
      [
        { source: CandidateSource.ANN, items: [item("a", 0.9), item("b", 0.8), item("c", 0.7)] },
        { source: CandidateSource.POPULAR, items: [item("c", 500), item("d", 400)] },
      ],
      3,
    );
    // c: ranks 3 and 1; a: rank 1; b and d tie at rank 2, broken by id.
    expect(merged.map((c) => c.itemId)).toEqual(["c", "a", "b"]);
    expect(merged[0]!.score).toBeCloseTo(1 / (RRF_K + 3) + 1 / (RRF_K + 1), 12);
    expect(merged[0]!.sources).toEqual([
      { source: CandidateSource.ANN, score: 0.7 },
      { source: CandidateSource.POPULAR, score: 500 },
    ]);
  });
});

describe("embedding artifacts", () => {
  const catalogue = syntheticCatalogue({ items: 20, users: 3, dim: 4, clusters: 2, categories: 2 });
  const models = join(dir, "models");
  const embeddings = join(models, "embeddings", "v1");

  it("reads what the training pipeline writes, checking the manifest's sha256", async () => {
    writeModels(models, catalogue);
    const manifest = JSON.parse(readFileSync(join(embeddings, "manifest.json"), "utf8"));
    const sha = (file: string) => createHash("sha256").update(readFileSync(join(embeddings, file))).digest("hex");
    writeFileSync(join(embeddings, "manifest.json"), JSON.stringify({ ...manifest, sha256: { "items.f32": sha("items.f32"), "users.f32": sha("users.f32") } }));
    const artifacts = await readEmbeddings(embeddings);
    expect(artifacts.dim).toBe(4);
    expect(artifacts.items.ids).toEqual(catalogue.itemIds);
    expect(artifacts.items.vectors).toEqual(catalogue.itemVectors);
    expect(artifacts.users.rowOf.get("user-2")).toBe(2);

    writeFileSync(join(embeddings, "manifest.json"), JSON.stringify({ ...manifest, sha256: { "items.f32": "00".repeat(32) } }));
    await expect(readEmbeddings(embeddings)).rejects.toThrow(/items\.f32: sha256 differs from the manifest/);
  });

  it("refuses duplicate ids and a wrong manifest", async () => {
    writeModels(models, catalogue);
    writeFileSync(join(embeddings, "item_ids.txt"), [...catalogue.itemIds.slice(0, 19), "item-0"].join("\n"));
    await expect(readEmbeddings(embeddings)).rejects.toThrow(/item_ids\.txt:20: duplicate id "item-0"/);
    writeModels(models, catalogue);
    writeFileSync(join(embeddings, "manifest.json"), JSON.stringify({ kind: "ranker", dim: 4 }));
    await expect(readEmbeddings(embeddings)).rejects.toThrow(/manifest\.json/);
  });
});

describe("ItemIndex", () => {
  const catalogue = syntheticCatalogue({ items: 300, users: 1, dim: 8, clusters: 4, categories: 3 });
  const rows = () => ({ ids: catalogue.itemIds, categories: catalogue.categories, vectors: catalogue.itemVectors.slice() });
  const query = catalogue.space.sample(1);

  it("gives a deleted item its label back when it is upserted again", async () => {
    const index = await ItemIndex.build(rows(), 8, params, { version: "t", origin: "artifacts" });
    const [nearest] = index.search(query, 1, { filter: noFilter });
    index.delete([nearest!.itemId]);
    expect(index.search(query, 300, { exact: true }).map((h) => h.itemId)).not.toContain(nearest!.itemId);
    const vector = Float32Array.from(query);
    expect(normalize(vector)).toBe(true);
    expect(index.upsert([{ itemId: nearest!.itemId, category: "cat-9", vector }])).toEqual({ inserted: 1, updated: 0 });
    expect([index.size, index.deleted, index.capacity]).toEqual([300, 0, 330]);
    expect(index.search(query, 1)[0]).toMatchObject({ itemId: nearest!.itemId, category: "cat-9" });
  });

  it("saves and loads to the same answers, deletions included", async () => {
    const index = await ItemIndex.build(rows(), 8, params, { version: "saved", origin: "artifacts" });
    index.delete(["item-7"]);
    const target = join(dir, "saved-index");
    mkdirSync(target);
    await index.save(target);
    const loaded = await ItemIndex.load(target, 50);
    expect([loaded.version, loaded.origin, loaded.size, loaded.deleted]).toEqual(["saved", "file", 299, 1]);
    for (const exact of [false, true]) expect(loaded.search(query, 20, { exact })).toEqual(index.search(query, 20, { exact }));
    expect(loaded.has("item-7")).toBe(false);
  });
});

describe("IndexFiles", () => {
  const vector = Float32Array.from([0.6, 0.8]);

  it("keeps logged ops after the committed snapshot only, with vectors bit for bit", async () => {
    const files = new IndexFiles(join(dir, "files-commit"), log);
    files.append({ seq: 1, delete: ["a"] });
    files.append({ seq: 2, upsert: [{ itemId: "b", category: "c", vector }] });
    files.append({ seq: 3, delete: ["b"] });
    const index = await ItemIndex.build({ ids: ["x"], categories: ["c"], vectors: vector }, 2, params, { version: "snap-1", origin: "artifacts" });
    files.commit(await files.write(index), 1);
    expect(files.opsAfter(0)).toEqual([
      { seq: 2, upsert: [{ itemId: "b", category: "c", vector }] },
      { seq: 3, delete: ["b"] },
    ]);
    expect(await files.current()).toMatchObject({ dir: join(dir, "files-commit", "snapshots", "snap-1"), seq: 1 });
  });

  it("drops a torn last line so the next append starts clean", () => {
    const root = join(dir, "files-torn");
    const files = new IndexFiles(root, log);
    files.append({ seq: 1, delete: ["a"] });
    appendFileSync(join(root, "ops.jsonl"), '{"seq":2,"dele');
    expect(files.opsAfter(0)).toEqual([{ seq: 1, delete: ["a"] }]);
    files.append({ seq: 2, delete: ["b"] });
    expect(files.opsAfter(0)).toEqual([
      { seq: 1, delete: ["a"] },
      { seq: 2, delete: ["b"] },
    ]);
  });
});
