import { afterEach, expect } from "vitest";
import { Client } from "./clients.js";
import { admin, type SampleEnv } from "./processes.js";

export * from "./clients.js";
export * from "./processes.js";

/** Runs `admin grant` and expects it to succeed. */
export async function grant(env: SampleEnv, user: string, group: string, ...options: string[]) {
  const result = await admin(env, "grant", user, group, ...options);
  expect(result.code, result.stderr).toBe(0);
}

/**
 * A `connect` for one test file: every client it opens is closed after each test, and fails the
 * test if it received a binary frame (the protocol is JSON in text frames).
 */
export function useClients() {
  const clients: Client[] = [];
  afterEach(() => {
    for (const client of clients.splice(0)) {
      client.close();
      expect(client.messages.filter((m) => m.type === "BINARY FRAME")).toEqual([]);
    }
  });
  return async (...args: Parameters<typeof Client.connect>): Promise<Client> => {
    const client = await Client.connect(...args);
    clients.push(client);
    return client;
  };
}
