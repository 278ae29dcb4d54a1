import { defineConfig } from "vitest/config";

/** `npm run test:load`: 2,000 connections against the real sample (about a minute). */
export default defineConfig({
  test: {
    include: ["test/load/**/*.load.ts"],
    globalSetup: ["test/support/global-setup.ts"],
    testTimeout: 300_000,
    hookTimeout: 120_000,
  },
});
