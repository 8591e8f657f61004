// The item catalogue (the kit reads it): item categories for events that come without one.
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { readCatalog } from "../kit/artifacts.js";

export const DEFAULT_CATALOG_PATH = fileURLToPath(new URL("../../models/catalog/v1/items.jsonl", import.meta.url));

/**
 * Item id -> category from a catalogue file. The explicit path must exist; the
 * default one may not (yet): then no categories are known.
 */
export async function loadCategories(path: string | undefined): Promise<Map<string, string>> {
  const file = path ?? DEFAULT_CATALOG_PATH;
  if (!path && !existsSync(file)) return new Map();
  return new Map((await readCatalog(file)).map((item) => [item.itemId, item.category]));
}
