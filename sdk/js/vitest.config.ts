import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // the end-to-end tests share one live system and restart its gateway: one file at a time, in order
    fileParallelism: false,
    sequence: { concurrent: false },
  },
});
