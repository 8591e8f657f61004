import { defineConfig } from "vitest/config";

// Tests start real servers, Redis and Envoy: generous timeouts, at most two files at
// once on a 2-core machine. The "cluster" project reruns the files that use Redis
// against a 6-node Redis Cluster (RECSYS_TEST_REDIS=cluster makes their Redis helper,
// test/support/redis-cluster.ts, start one), plus the cluster-only failover tests.
// Files under test/mesh/ bring up the whole mesh on its fixed ports, so they run one
// at a time, after everything else.
const timeouts = { testTimeout: 60_000, hookTimeout: 120_000 };

/** Service test files that run unchanged on a single Redis and on a Redis Cluster. */
const redisSuites = [
  "services/feature/test/server.test.ts",
  "services/feature/test/store.test.ts",
  "services/feature/test/materialize.test.ts",
  "services/feature/test/aggregator.test.ts",
  "services/experiment/test/server.test.ts",
  "services/retrieval/test/candidates.test.ts",
  "services/retrieval/test/replicas.test.ts",
  "services/prediction/test/exposures.test.ts",
  "services/prediction/test/prediction.test.ts",
  "services/prediction/test/cache.test.ts",
  "services/prediction/test/predict-exposures.test.ts",
];

export default defineConfig({
  test: {
    pool: "forks",
    maxWorkers: 2,
    reporters: ["default"],
    projects: [
      {
        test: {
          name: "unit",
          include: ["services/**/test/**/*.test.ts", "test/*.test.ts"],
          exclude: ["test/cluster*.test.ts"],
          ...timeouts,
          sequence: { groupOrder: 0 },
        },
      },
      {
        test: {
          name: "cluster",
          include: [...redisSuites, "test/cluster*.test.ts"],
          env: { RECSYS_TEST_REDIS: "cluster" },
          ...timeouts,
          // Six (or twelve) redis-servers per file: one file at a time.
          fileParallelism: false,
          sequence: { groupOrder: 1 },
        },
      },
      {
        test: {
          name: "mesh",
          include: ["test/mesh/**/*.test.ts"],
          ...timeouts,
          fileParallelism: false,
          sequence: { groupOrder: 2 },
        },
      },
    ],
  },
});
