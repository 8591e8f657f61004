import { cpSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import type { Client } from "@connectrpc/connect";
import { EventType } from "../../../gen/recsys/common/v1/common_pb.js";
import { EntityType, type FeatureRow, type FeatureRowSchema, type FeatureService } from "../../../gen/recsys/feature/v1/feature_pb.js";
import { ROOT } from "../../../scripts/lib/tools.js";
import { views, type BatchView } from "../../feature/registry.js";

const MODELS = join(ROOT, "models");

/**
 * The training pipeline's batch feature files (models/features/v1) as WriteFeatures
 * rows stamped now, keeping the features the view declares: the files carry the
 * training split's time, which the views' TTL has long expired.
 */
function featureRows(modelsDir: string, file: string, viewName: string, entityType: EntityType): MessageInitShape<typeof FeatureRowSchema>[] {
  const view = views.find((v): v is BatchView => v.name === viewName)!;
  const eventTime = timestampNow();
  return readFileSync(join(modelsDir, "features", "v1", file), "utf8")
    .trim()
    .split("\n")
    .map((line) => {
      const { entity_id, values } = JSON.parse(line) as { entity_id: string; values: Record<string, unknown> };
      const typed: FeatureRow["values"] = {};
      for (const feature of view.features) {
        const value = values[feature.name];
        if (value === undefined || value === null) continue;
        const kind =
          feature.type === "double"
            ? { case: "doubleValue" as const, value: value as number }
            : feature.type === "int64"
              ? { case: "int64Value" as const, value: BigInt(value as number) }
              : feature.type === "string"
                ? { case: "stringValue" as const, value: value as string }
                : { case: "doubleMap" as const, value: { values: value as Record<string, number> } };
        typed[feature.name] = { kind } as FeatureRow["values"][string];
      }
      return { entityType, entityId: entity_id, featureView: viewName, values: typed, eventTime };
    });
}

/** Writes every user's and item's batch features of the models in `modelsDir` into the feature store. */
export async function seedBatchFeatures(features: Client<typeof FeatureService>, modelsDir = MODELS): Promise<void> {
  await features.writeFeatures({ rows: featureRows(modelsDir, "user_features.jsonl", "user_profile", EntityType.USER) }, { timeoutMs: 30_000 });
  await features.writeFeatures({ rows: featureRows(modelsDir, "item_features.jsonl", "item_profile", EntityType.ITEM) }, { timeoutMs: 30_000 });
}

/** A user whose popular answers can be told apart: their favourite category F, a category G they never touched, and items of each. */
export interface PopularFixture {
  userId: string;
  favourite: string;
  other: string;
  /** Least popular items of F and of G in the catalogue (so never among the static defaults), most clicked first. */
  favouriteItems: string[];
  otherItems: string[];
}

/** Picks, from the models in `modelsDir`, a user with one clear favourite category, and items to make popular. */
export function popularFixture(modelsDir = MODELS): PopularFixture {
  const lines = (file: string) => readFileSync(join(modelsDir, file), "utf8").trim().split("\n").map((line) => JSON.parse(line));
  const users = lines("features/v1/user_features.jsonl") as { entity_id: string; values: { category_affinity?: Record<string, number> } }[];
  const catalogue = lines("catalog/v1/items.jsonl") as { item_id: string; category: string; popularity: number }[];
  const categories = [...new Set(catalogue.map((item) => item.category))].sort();
  const leastPopular = (category: string) =>
    catalogue
      .filter((item) => item.category === category)
      .sort((a, b) => a.popularity - b.popularity || (a.item_id < b.item_id ? -1 : 1))
      .slice(0, 3)
      .map((item) => item.item_id);
  for (const user of users) {
    const affinity = Object.entries(user.values.category_affinity ?? {}).sort((a, b) => b[1] - a[1]);
    const [first, second] = affinity;
    const untouched = categories.find((c) => !(c in (user.values.category_affinity ?? {})));
    if (!first || (second && second[1] === first[1]) || !untouched) continue;
    return { userId: user.entity_id, favourite: first[0], other: untouched, favouriteItems: leastPopular(first[0]), otherItems: leastPopular(untouched) };
  }
  throw new Error("no user with one favourite category in models/features/v1/user_features.jsonl");
}

/**
 * Clicks by a user of its own, so that the feature service's aggregator publishes
 * popular lists where G's items lead overall (9, 8, 7 clicks) and F's lead F (4, 3, 2).
 */
export async function clickPopularItems(features: Client<typeof FeatureService>, fixture: PopularFixture): Promise<void> {
  const timestamp = timestampNow();
  const clicks = (items: string[], category: string, counts: number[]) =>
    items.flatMap((itemId, i) => Array.from({ length: counts[i]! }, (_, n) => ({ itemId, category, n })));
  const events = [...clicks(fixture.otherItems, fixture.other, [9, 8, 7]), ...clicks(fixture.favouriteItems, fixture.favourite, [4, 3, 2])].map(({ itemId, category, n }) => ({
    eventId: `popular-fixture-${itemId}-${n}`,
    userId: "popular-fixture-clicker",
    itemId,
    type: EventType.CLICK,
    timestamp,
    category,
  }));
  await features.ingestEvents({ events }, { timeoutMs: 30_000 });
}

/** Copies the v1 models the prediction, feature and retrieval servers read into dir/models; returns that path. */
export function copyModels(dir: string): string {
  const models = join(dir, "models");
  for (const name of ["ranker-gbdt", "ranker-mlp", "ranker-mlp-int8", "embeddings", "catalog", "features"]) {
    cpSync(join(ROOT, "models", name, "v1"), join(models, name, "v1"), { recursive: true });
  }
  return models;
}
