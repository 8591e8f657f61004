// Clustered synthetic embeddings for the retrieval tests and bench: real item
// embeddings bunch around topics, which is what makes ANN recall hard, so uniform
// random vectors would flatter the index.
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { seededRandom } from "../../../test/support/random.js";

export { seededRandom };

function gaussian(random: () => number): number {
  return Math.sqrt(-2 * Math.log(random() || Number.MIN_VALUE)) * Math.cos(2 * Math.PI * random());
}

export interface ClusteredSpace {
  dim: number;
  /** Draws `count` unit vectors: a random centre plus gaussian noise of `spread` per dimension. */
  sample(count: number): Float32Array;
}

export function clusteredSpace(options: { dim: number; clusters: number; spread?: number; seed?: number }): ClusteredSpace {
  const { dim, clusters, spread = 0.6 } = options;
  const random = seededRandom(options.seed ?? 1);
  const centres = Float32Array.from({ length: clusters * dim }, () => gaussian(random));
  return {
    dim,
    sample(count) {
      const out = new Float32Array(count * dim);
      for (let row = 0; row < count; row++) {
        const centre = Math.floor(random() * clusters) * dim;
        let norm = 0;
        for (let j = 0; j < dim; j++) {
          const value = centres[centre + j]! + spread * gaussian(random);
          out[row * dim + j] = value;
          norm += value * value;
        }
        const scale = 1 / Math.sqrt(norm);
        for (let j = 0; j < dim; j++) out[row * dim + j]! *= scale;
      }
      return out;
    },
  };
}

export function row(vectors: Float32Array, index: number, dim: number): number[] {
  return Array.from(vectors.subarray(index * dim, (index + 1) * dim));
}

export interface SyntheticCatalogue {
  dim: number;
  itemIds: string[];
  itemVectors: Float32Array;
  categories: string[];
  popularity: number[];
  userIds: string[];
  userVectors: Float32Array;
}

/** items "item-<i>" in categories "cat-<i % categories>" (independent of the clusters), users "user-<i>". */
export function syntheticCatalogue(options: { items: number; users: number; dim: number; clusters: number; categories: number; seed?: number }): SyntheticCatalogue & { space: ClusteredSpace } {
  const space = clusteredSpace({ dim: options.dim, clusters: options.clusters, seed: options.seed });
  const itemIds = Array.from({ length: options.items }, (_, i) => `item-${i}`);
  return {
    space,
    dim: options.dim,
    itemIds,
    itemVectors: space.sample(options.items),
    categories: itemIds.map((_, i) => `cat-${i % options.categories}`),
    // Static popularity falls with the item number: item-0 is the most popular.
    popularity: itemIds.map((_, i) => options.items - i),
    userIds: Array.from({ length: options.users }, (_, i) => `user-${i}`),
    userVectors: space.sample(options.users),
  };
}

/** Writes the catalogue in the training pipeline's layout under modelsDir (version v1). */
export function writeModels(modelsDir: string, catalogue: SyntheticCatalogue): void {
  const embeddings = join(modelsDir, "embeddings", "v1");
  const catalog = join(modelsDir, "catalog", "v1");
  mkdirSync(embeddings, { recursive: true });
  mkdirSync(catalog, { recursive: true });
  const bytes = (v: Float32Array) => new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
  writeFileSync(join(embeddings, "items.f32"), bytes(catalogue.itemVectors));
  writeFileSync(join(embeddings, "item_ids.txt"), `${catalogue.itemIds.join("\n")}\n`);
  writeFileSync(join(embeddings, "users.f32"), bytes(catalogue.userVectors));
  writeFileSync(join(embeddings, "user_ids.txt"), `${catalogue.userIds.join("\n")}\n`);
  writeFileSync(
    join(embeddings, "manifest.json"),
    JSON.stringify({ kind: "embeddings", dim: catalogue.dim, items: catalogue.itemIds.length, users: catalogue.userIds.length }),
  );
  writeFileSync(
    join(catalog, "items.jsonl"),
    catalogue.itemIds
      .map((itemId, i) => JSON.stringify({ item_id: itemId, category: catalogue.categories[i], popularity: catalogue.popularity[i], created_at: "2025-01-01T00:00:00Z" }))
      .join("\n") + "\n",
  );
}
