// The item catalogue (JSON lines from the training pipeline): item categories for
// events that come without one, and the popularity that seeds the popular lists.
import { createReadStream, existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";

export const DEFAULT_CATALOG_PATH = fileURLToPath(new URL("../../models/catalog/v1/items.jsonl", import.meta.url));

/** Categories become Redis key names and list names; "all" names the list of every item. */
export const CATEGORY_PATTERN = /^[A-Za-z0-9_.-]{1,64}$/;

export interface CatalogItem {
  itemId: string;
  category: string;
  popularity: number;
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
  if (typeof category !== "string" || !CATEGORY_PATTERN.test(category) || category === "all") {
    return { error: `category: expected ${CATEGORY_PATTERN} other than "all", got ${JSON.stringify(category)}` };
  }
  if (typeof popularity !== "number" || !Number.isFinite(popularity) || popularity < 0) return { error: "popularity: expected a number >= 0" };
  return { itemId: item_id, category, popularity };
}

/**
 * Item id -> category from a catalogue file. The explicit path must exist; the
 * default one may not (yet): then no categories are known.
 */
export async function loadCategories(path: string | undefined): Promise<Map<string, string>> {
  const categories = new Map<string, string>();
  const file = path ?? DEFAULT_CATALOG_PATH;
  if (!path && !existsSync(file)) return categories;
  let lineNumber = 0;
  for await (const line of createInterface({ input: createReadStream(file), crlfDelay: Infinity })) {
    lineNumber++;
    if (line.trim() === "") continue;
    const item = parseCatalogLine(line);
    if ("error" in item) throw new Error(`${file}:${lineNumber}: ${item.error}`);
    categories.set(item.itemId, item.category);
  }
  return categories;
}
