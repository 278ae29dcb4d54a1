import { defineConfig } from "vitest/config";

/** Every project starts its own Azurite for the run (random port, in memory). */
const globalSetup = ["test/support/global-setup.ts"];

export default defineConfig({
  test: {
    projects: [
      {
        // `npm test`: everything that needs only Node (and the Azurite it starts).
        test: {
          name: "unit",
          include: ["test/**/*.test.ts"],
          globalSetup,
          testTimeout: 30_000,
          hookTimeout: 60_000,
        },
      },
      {
        // `npm run test:redis`: two Socket.IO servers on a real Redis.
        test: {
          name: "redis",
          include: ["test/**/*.redis.ts"],
          globalSetup,
          testTimeout: 90_000,
          hookTimeout: 60_000,
        },
      },
      {
        // `npm run test:browser`: the web page in Debian's Chromium, driven by playwright-core.
        test: {
          name: "browser",
          include: ["test/browser/**/*.browser.ts"],
          globalSetup,
          testTimeout: 120_000,
          hookTimeout: 60_000,
        },
      },
      {
        // `npm run test:load`: 2,000 connections against the real sample (about a minute).
        test: {
          name: "load",
          include: ["test/load/**/*.load.ts"],
          globalSetup,
          testTimeout: 300_000,
          hookTimeout: 120_000,
        },
      },
    ],
  },
});
