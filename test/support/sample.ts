import jwt from "jsonwebtoken";
import { afterEach, expect } from "vitest";
import { Client, SignalRClient } from "./clients.js";
import { admin, type SampleEnv, token } from "./processes.js";

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

/** `useClients` for the official SignalR client: each one opened is stopped after each test. */
export function useSignalRClients() {
  const clients: SignalRClient[] = [];
  afterEach(() => {
    for (const client of clients.splice(0)) client.close();
  });
  return async (...args: Parameters<typeof SignalRClient.connect>): Promise<SignalRClient> => {
    const client = await SignalRClient.connect(...args);
    clients.push(client);
    return client;
  };
}

/** Requests headers with every kind of bad token the sample must refuse (and none at all). */
export function badTokens(env: SampleEnv): Record<string, Record<string, string>> {
  const bearer = (t: string) => ({ authorization: `Bearer ${t}` });
  const none = `${Buffer.from('{"alg":"none","typ":"JWT"}').toString("base64url")}.${Buffer.from(
    JSON.stringify({
      sub: "alice",
      exp: Math.floor(Date.now() / 1000) + 600,
      iss: "hub-membership-sample",
      aud: "hub-membership-sample",
    }),
  ).toString("base64url")}.`;
  return {
    missing: {},
    "not a JWT": bearer("garbage"),
    forged: bearer(token(env, "alice", {}, "x".repeat(40))),
    expired: bearer(token(env, "alice", { expiresIn: -10 })),
    "not yet valid": bearer(token(env, "alice", { notBefore: 3600 })),
    "wrong audience": bearer(token(env, "alice", { audience: "someone-else" })),
    "wrong issuer": bearer(token(env, "alice", { issuer: "someone-else" })),
    "no sub": bearer(token(env, undefined)),
    "empty sub": bearer(token(env, "")),
    "alg none": bearer(none),
    "HS512 instead of HS256": bearer(token(env, "alice", { algorithm: "HS512" })),
    "no exp": bearer(
      // jsonwebtoken adds exp only when asked: sign without expiresIn
      jwt.sign({ sub: "alice" }, env.JWT_SECRET, {
        algorithm: "HS256",
        issuer: "hub-membership-sample",
        audience: "hub-membership-sample",
      }),
    ),
    "basic scheme": { authorization: `Basic ${token(env, "alice")}` },
  };
}

/** The sample's structured log lines (pino's JSON) in its output, parsed. */
export function logLines(output: string): Array<Record<string, unknown>> {
  return output
    .split("\n")
    .filter((line) => line.startsWith("{"))
    .map((line) => JSON.parse(line) as Record<string, unknown>);
}
