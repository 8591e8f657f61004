import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import type { Client } from "@connectrpc/connect";
import { EntityType, type FeatureRow, type FeatureRowSchema, type FeatureService } from "../../../gen/recsys/feature/v1/feature_pb.js";
import { ROOT } from "../../../scripts/tools.js";
import { views, type BatchView } from "../../feature/registry.js";

/**
 * The training pipeline's batch feature files (models/features/v1) as WriteFeatures
 * rows stamped now, keeping the features the view declares: the files carry the
 * training split's time, which the views' TTL has long expired.
 */
function featureRows(file: string, viewName: string, entityType: EntityType): MessageInitShape<typeof FeatureRowSchema>[] {
  const view = views.find((v): v is BatchView => v.name === viewName)!;
  const eventTime = timestampNow();
  return readFileSync(join(ROOT, "models", "features", "v1", file), "utf8")
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

/** Writes every user's and item's batch features of the committed models into the feature store. */
export async function seedBatchFeatures(features: Client<typeof FeatureService>): Promise<void> {
  await features.writeFeatures({ rows: featureRows("user_features.jsonl", "user_profile", EntityType.USER) }, { timeoutMs: 30_000 });
  await features.writeFeatures({ rows: featureRows("item_features.jsonl", "item_profile", EntityType.ITEM) }, { timeoutMs: 30_000 });
}
