// Who may call what: the one table of every RPC's access class and its callers
// inside the mesh. envoy/security.ts turns it into the edge's JWT rules and RBAC and
// each sidecar's RBAC by peer certificate; the apps keep their own admin checks.
import { service } from "./topology.js";

/**
 * public: anyone, anonymous or signed in (rate-limited by tier at the edge).
 * internal: through the edge only with a verified token of role service or admin;
 *   inside the mesh only from the callers named.
 * admin: through the edge only with a verified token of role admin; inside the mesh
 *   only from the edge (no service calls an admin RPC of another).
 */
export type AccessClass = "public" | "internal" | "admin";

export interface MethodAccess {
  /** The topology service that serves it. */
  service: string;
  method: string;
  access: AccessClass;
  /**
   * Mesh identities (topology service names) whose sidecars may call it directly,
   * besides the edge; each must list `service` among its upstreams.
   */
  callers: string[];
  /** Why it is in this class. */
  why: string;
}

const method = (svc: string, name: string, access: AccessClass, callers: string[], why: string): MethodAccess => ({ service: svc, method: name, access, callers, why });

export const accessTable: MethodAccess[] = [
  method("prediction", "Predict", "public", [], "the product: what the demo page and backends call"),
  method("prediction", "PredictBatch", "public", [], "Predict for several users; bounded by its request limits"),
  method("prediction", "InvalidateCache", "admin", [], "drops every cached answer: a cost any caller could impose"),
  method("prediction", "ReloadModels", "admin", [], "swaps the models in production"),
  method("feature", "GetOnlineFeatures", "internal", ["prediction"], "raw per-user features are personal data"),
  method("feature", "WriteFeatures", "admin", [], "overwrites feature rows (materialisation, backfills)"),
  method("feature", "IngestEvents", "internal", [], "events steer features and popular lists: backends only, never browsers"),
  method("feature", "IngestEventStream", "internal", [], "as IngestEvents"),
  method("feature", "ListFeatureViews", "internal", [], "the registry's schema: for backends and operators"),
  method("retrieval", "Search", "internal", ["prediction"], "embedding search: a building block of Predict, costly per call"),
  method("retrieval", "GetCandidates", "internal", ["prediction"], "per-user candidates: a building block of Predict"),
  method("retrieval", "GetCandidatesBatch", "internal", ["prediction"], "GetCandidates for several users: how prediction asks"),
  method("retrieval", "GetPopular", "public", ["prediction"], "popular lists are public on any storefront; prediction's popular rung"),
  method("retrieval", "UpsertItems", "admin", [], "changes the catalogue"),
  method("retrieval", "DeleteItems", "admin", [], "changes the catalogue"),
  method("retrieval", "IndexInfo", "internal", [], "operational detail for operators and backends"),
  method("retrieval", "RebuildIndex", "admin", [], "a costly background rebuild"),
  method("experiment", "Assign", "public", ["prediction"], "a user's own variants (the app decides; nothing secret); prediction's remote assigner"),
  method("experiment", "CreateExperiment", "admin", [], "changes what users see"),
  method("experiment", "UpdateExperiment", "admin", [], "changes what users see"),
  method("experiment", "ListExperiments", "admin", [], "the app requires the admin token for it (experiment.proto)"),
  method("experiment", "RecordExposures", "internal", ["prediction"], "forged exposures would skew results: backends only, and prediction for the variants it serves"),
  method("experiment", "RecordOutcome", "internal", [], "forged outcomes would skew results: backends only"),
  method("experiment", "GetResults", "internal", [], "unpublished results: backends and operators"),
  method("echo", "Echo", "public", [], "the benchmark baseline"),
];

/** Health and reflection: public at the edge (probes, grpcurl); at a sidecar health is open to every mesh identity (health checks come from each caller's Envoy), reflection to the edge. */
export const infraPaths = {
  health: ["/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"],
  reflection: ["/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"],
};

/** The gRPC path of a table entry: /<package.Service>/<Method>. */
export function methodPath(entry: Pick<MethodAccess, "service" | "method">): string {
  const grpcService = service(entry.service).grpcServices[0]!;
  return `/${grpcService}/${entry.method}`;
}

export function pathsOf(access: AccessClass): string[] {
  return accessTable.filter((e) => e.access === access).map(methodPath);
}

/** The table as markdown, for the README. */
export function accessTableMarkdown(): string {
  const who: Record<AccessClass, string> = {
    public: "anyone (anonymous or any verified token)",
    internal: "verified token with role `service` or `admin`",
    admin: "verified token with role `admin`",
  };
  const rows = accessTable.map((e) => `| ${e.service} | \`${e.method}\` | ${e.access} | ${who[e.access]} | ${["edge", ...e.callers].join(", ")} | ${e.why} |`);
  return [
    "| service | method | class | through the edge | sidecar admits (peer certificate) | why |",
    "|---|---|---|---|---|---|",
    ...rows,
    `| any | health | public | anyone | every mesh identity | probes and Envoy's health checks |`,
    `| prediction (at the edge) | reflection | public | anyone | edge | grpcurl without proto files |`,
  ].join("\n");
}
