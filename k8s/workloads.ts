// How each service of envoy/topology.ts runs on Kubernetes: what the topology does not
// say (sizes, autoscaling, Redis, writable paths). k8s/render.ts combines the two into
// k8s/base/. Edit here, then `npx tsx k8s/render.ts`.

export interface Resources {
  requests: { cpu: string; memory: string };
  limits: { cpu: string; memory: string };
}

export interface Workload {
  /** The app container's share; the Envoy sidecar has its own (sidecarResources). */
  resources: Resources;
  autoscaling: {
    minReplicas: number;
    maxReplicas: number;
    /** Target CPU utilisation of the app container, percent of its request. */
    cpuPercent: number;
    /** Target gRPC requests per second per pod (grpc_server_handled_per_second). */
    rpsPerPod: number;
  };
  /** Reads REDIS_URL: gets the Secret and the NetworkPolicy path to Redis. */
  redis: boolean;
  /** Writable directories on an emptyDir (the root filesystem is read-only): env var -> path. */
  dataDirs?: Record<string, string>;
  /** Settings of the service that its replicas need in the cluster. */
  env?: Record<string, string>;
  /**
   * Seconds the app may take to report SERVING the first time: loading and warming
   * models, building the ANN index.
   */
  startupSeconds: number;
}

export const workloads: Record<string, Workload> = {
  prediction: {
    resources: { requests: { cpu: "1", memory: "1Gi" }, limits: { cpu: "2", memory: "2Gi" } },
    autoscaling: { minReplicas: 2, maxReplicas: 30, cpuPercent: 70, rpsPerPod: 400 },
    redis: true,
    startupSeconds: 180,
  },
  feature: {
    resources: { requests: { cpu: "500m", memory: "512Mi" }, limits: { cpu: "2", memory: "1Gi" } },
    autoscaling: { minReplicas: 2, maxReplicas: 20, cpuPercent: 70, rpsPerPod: 2000 },
    redis: true,
    startupSeconds: 120,
  },
  retrieval: {
    resources: { requests: { cpu: "500m", memory: "1Gi" }, limits: { cpu: "2", memory: "2Gi" } },
    autoscaling: { minReplicas: 2, maxReplicas: 10, cpuPercent: 70, rpsPerPod: 1000 },
    redis: true,
    dataDirs: { RETRIEVAL_DATA_DIR: "/var/lib/recsys/retrieval" },
    // Two or more replicas: upserts and deletes go through a shared Redis Stream that
    // every replica applies, so an item written through one is served by all.
    env: { REPLICATE_INDEX_OPS: "true" },
    startupSeconds: 600,
  },
  experiment: {
    resources: { requests: { cpu: "200m", memory: "256Mi" }, limits: { cpu: "1", memory: "512Mi" } },
    autoscaling: { minReplicas: 2, maxReplicas: 6, cpuPercent: 70, rpsPerPod: 2000 },
    redis: true,
    startupSeconds: 60,
  },
  echo: {
    resources: { requests: { cpu: "100m", memory: "128Mi" }, limits: { cpu: "1", memory: "256Mi" } },
    autoscaling: { minReplicas: 1, maxReplicas: 4, cpuPercent: 70, rpsPerPod: 5000 },
    redis: false,
    startupSeconds: 60,
  },
};

export const sidecarResources: Resources = { requests: { cpu: "100m", memory: "128Mi" }, limits: { cpu: "1", memory: "256Mi" } };
export const edge = {
  resources: { requests: { cpu: "500m", memory: "256Mi" }, limits: { cpu: "2", memory: "512Mi" } } satisfies Resources,
  autoscaling: { minReplicas: 2, maxReplicas: 10, cpuPercent: 70, rpsPerPod: 5000 },
};

/**
 * envoyproxy/ratelimit, the edges' global rate limit: one Redis round trip per call,
 * so small, and scaled on CPU only (it exports no per-pod request rate here).
 */
export const rateLimit = {
  /** The commit scripts/setup.mjs builds for the tests, as published on Docker Hub. */
  image: "envoyproxy/ratelimit:3fb70258",
  resources: { requests: { cpu: "100m", memory: "64Mi" }, limits: { cpu: "1", memory: "256Mi" } } satisfies Resources,
  autoscaling: { minReplicas: 2, maxReplicas: 6, cpuPercent: 70 },
};

/**
 * Batch jobs (k8s/base/jobs.yaml). Each runs a script of a service's image; `upstreams`
 * are called through an Envoy sidecar with that service's config, as the service does.
 */
export interface BatchJob {
  name: string;
  kind: "Job" | "CronJob";
  /** CronJob schedule. */
  schedule?: string;
  /** Whose image, config shape and (when it has upstreams) sidecar config the job uses. */
  service: string;
  version: string;
  /** Compiled scripts with their arguments, run with node in order, each to completion; a failure fails the job. */
  commands: string[][];
  upstreams: string[];
  resources: Resources;
}

export const jobs: BatchJob[] = [
  {
    // Loads the batch features and catalogue the training pipeline wrote (models/ in
    // the image) into the online store. Idempotent: rows are guarded by event time and
    // a rerun resumes from its checkpoint.
    name: "materialize",
    kind: "Job",
    service: "feature",
    version: "v1",
    commands: ["models/catalog/v1/items.jsonl", "models/features/v1/user_features.jsonl", "models/features/v1/item_features.jsonl"].map((file) => [
      "services/feature/materialize.js",
      file,
    ]),
    upstreams: [],
    resources: { requests: { cpu: "500m", memory: "512Mi" }, limits: { cpu: "1", memory: "1Gi" } },
  },
  {
    // Refreshes the L2 prediction cache for hot users before their entries expire
    // (CACHE_FRESH_S is an hour).
    name: "precompute",
    kind: "CronJob",
    schedule: "15 * * * *",
    service: "prediction",
    version: "v1",
    commands: [["services/prediction/precompute.js", "--users", "10000", "--concurrency", "8"]],
    upstreams: ["experiment", "feature", "retrieval"],
    resources: { requests: { cpu: "1", memory: "1Gi" }, limits: { cpu: "2", memory: "2Gi" } },
  },
];
