import { defineConfig } from "vitest/config";

// Tests start real servers, Redis and Envoy: generous timeouts, at most two files at
// once on a 2-core machine. Files under test/mesh/ bring up the whole mesh on its
// fixed ports, so they run one at a time, after everything else.
const timeouts = { testTimeout: 60_000, hookTimeout: 120_000 };

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
          ...timeouts,
          sequence: { groupOrder: 0 },
        },
      },
      {
        test: {
          name: "mesh",
          include: ["test/mesh/**/*.test.ts"],
          ...timeouts,
          fileParallelism: false,
          sequence: { groupOrder: 1 },
        },
      },
    ],
  },
});
