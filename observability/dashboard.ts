// The web console's dashboard (scripts/lib/web.ts asks Prometheus these, server-side):
// the questions an operator asks first, in PromQL over the same series the alert
// rules and the Grafana dashboard read. Windows of 1m: the console is a live view
// (Prometheus scrapes every 2 s under `npm run observe`).

export interface ConsolePanel {
  id: string;
  title: string;
  /** Labels that name a row, in column order (none: one figure). */
  by: string[];
  /** ratio renders as a percentage, seconds as a duration, number as a plain figure. */
  unit: "per_second" | "ratio" | "seconds" | "number";
  query: string;
}

const notHealth = 'grpc_service!="grpc.health.v1.Health"';
const serverErrors = 'grpc_code=~"UNKNOWN|DEADLINE_EXCEEDED|INTERNAL|UNAVAILABLE|DATA_LOSS"';
const handled = (filter: string) => `sum by (app, version) (rate(grpc_server_handled_total{${filter}}[1m]))`;
const answers = (filter = "") => `sum by (version) (rate(recsys_prediction_answers_total${filter ? `{${filter}}` : ""}[1m]))`;
const predictCalls = 'app="prediction", grpc_service="recsys.prediction.v1.PredictionService"';

export const consolePanels: ConsolePanel[] = [
  { id: "rate", title: "Requests per second", by: ["app", "version"], unit: "per_second", query: handled(notHealth) },
  {
    id: "errors",
    title: "Server errors (share of calls)",
    by: ["app", "version"],
    unit: "ratio",
    // `or ... * 0`: a version that has never failed shows 0, not nothing.
    query: `(${handled(`${notHealth}, ${serverErrors}`)} or ${handled(notHealth)} * 0) / ${handled(notHealth)}`,
  },
  {
    id: "p95",
    title: "p95 latency (unary)",
    by: ["app", "version"],
    unit: "seconds",
    query: `histogram_quantile(0.95, sum by (app, version, le) (rate(grpc_server_handling_seconds_bucket{${notHealth}, grpc_type="unary"}[1m])))`,
  },
  {
    id: "cache",
    title: "Prediction cache hit rate (L1 + L2)",
    by: ["version"],
    unit: "ratio",
    query: `(${answers('cache=~"l1|l2"')} or ${answers()} * 0) / ${answers()}`,
  },
  {
    id: "rungs",
    title: "Answers by fallback rung",
    by: ["version", "rung"],
    unit: "ratio",
    query: `sum by (version, rung) (rate(recsys_prediction_answers_total[1m])) / ignoring (rung) group_left ${answers()}`,
  },
  {
    id: "freshness",
    title: "Feature freshness p99 (event to online store)",
    by: [],
    unit: "seconds",
    query: "histogram_quantile(0.99, sum by (le) (rate(recsys_feature_freshness_seconds_bucket[1m])))",
  },
  {
    id: "canary",
    title: "Canary split (Predict calls each version served)",
    by: ["version"],
    unit: "ratio",
    query: `sum by (version) (rate(grpc_server_handled_total{${predictCalls}}[1m])) / ignoring (version) group_left sum (rate(grpc_server_handled_total{${predictCalls}}[1m]))`,
  },
  {
    id: "drift",
    title: "Feature drift: the 3 largest PSI per model version (0.1 moderate, 0.25 alert)",
    by: ["version", "model", "model_version", "feature"],
    unit: "number",
    query: "topk by (version, model, model_version) (3, max by (version, model, model_version, feature) (recsys_prediction_feature_psi))",
  },
  {
    id: "model-age",
    title: "Model age (since its training cut-off)",
    by: ["version", "model", "model_version"],
    unit: "seconds",
    query: "max by (version, model, model_version) (recsys_prediction_model_age_seconds)",
  },
  {
    id: "online-auc",
    title: "Online AUC as a share of offline, per variant and model (target 95%)",
    by: ["version", "variant", "model", "model_version"],
    unit: "ratio",
    query: 'max by (version, variant, model, model_version) (recsys_prediction_online_offline_ratio{metric="auc"})',
  },
];
