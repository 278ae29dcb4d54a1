import type { PipelinePolicy } from "@azure/core-rest-pipeline";
import { inject } from "vitest";
import {
  AzureTableMembershipStore,
  type AzureTableMembershipStoreOptions,
} from "../../adapters/index.js";

export { requestCounter } from "./request-counter.js";

let tables = 0;

/** A table name no other test uses. */
const freshTableName = () => `t${process.pid}x${Date.now().toString(36)}x${tables++}`;

const tableNames = new WeakMap<AzureTableMembershipStore, string>();

/** The table an {@link azureStore} works on. */
export const tableNameOf = (store: object) => tableNames.get(store as AzureTableMembershipStore);

/** An Azure store on the Azurite of this run (or `connectionString`), on `tableName` (default: a fresh table). */
export function azureStore(
  options: AzureTableMembershipStoreOptions & {
    policies?: PipelinePolicy[];
    connectionString?: string;
  } = {},
): AzureTableMembershipStore {
  const {
    policies = [],
    tableName = freshTableName(),
    connectionString = inject("azuriteConnectionString"),
    ...rest
  } = options;
  const store = AzureTableMembershipStore.fromConnectionString(connectionString, {
    tableName,
    pollIntervalMs: 100,
    ...rest,
    clientOptions: {
      ...rest.clientOptions,
      additionalPolicies: policies.map((policy) => ({ policy, position: "perRetry" as const })),
    },
  });
  tableNames.set(store, tableName);
  return store;
}
