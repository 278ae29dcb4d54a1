import { defineConfig } from "vitest/config";

/** `npm run test:browser`: the web page in Debian's Chromium, driven by playwright-core. */
export default defineConfig({
  test: {
    include: ["test/browser/**/*.browser.ts"],
    globalSetup: ["test/support/global-setup.ts"],
    testTimeout: 120_000,
    hookTimeout: 60_000,
  },
});
