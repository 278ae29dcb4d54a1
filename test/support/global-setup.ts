import type { TestProject } from "vitest/node";
import { startAzurite } from "../../adapters/testing/azurite.js";

declare module "vitest" {
  export interface ProvidedContext {
    /** Connection string of the Azurite this test run started (random port, in memory). */
    azuriteConnectionString: string;
  }
}

export default async function setup(project: TestProject) {
  const azurite = await startAzurite();
  project.provide("azuriteConnectionString", azurite.connectionString);
  return () => azurite.stop();
}
