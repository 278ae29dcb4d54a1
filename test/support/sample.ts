import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { fileURLToPath } from "node:url";
import jwt from "jsonwebtoken";
import { afterEach, expect } from "vitest";
import WebSocket from "ws";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));

/** Environment shared by a sample server and the admin script of one test. */
export interface SampleEnv {
  AZURE_TABLES_CONNECTION_STRING?: string;
  JWT_SECRET: string;
  MEMBERSHIP_TABLE: string;
  [name: string]: string | undefined;
}

let tables = 0;
/** A fresh environment: its own table, its own JWT secret. */
export function sampleEnv(connectionString: string): SampleEnv {
  return {
    AZURE_TABLES_CONNECTION_STRING: connectionString,
    JWT_SECRET: randomBytes(32).toString("base64url"),
    MEMBERSHIP_TABLE: `e2e${process.pid}x${Date.now().toString(36)}x${tables++}`,
  };
}

function childEnv(env: Record<string, string | undefined>) {
  const merged: Record<string, string | undefined> = { ...process.env, NODE_ENV: "test", ...env };
  return Object.fromEntries(
    Object.entries(merged).filter(([, v]) => v !== undefined),
  ) as NodeJS.ProcessEnv;
}

export interface RunningSample {
  readonly url: string;
  readonly wsUrl: string;
  readonly process: ChildProcess;
  output(): string;
  /** Sends `signal` and waits for the exit; resolves to the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/** Starts `sample/start.ts` (what `npm start` runs) on a free port and waits until it listens. */
export async function startSample(env: Record<string, string | undefined>): Promise<RunningSample> {
  const child = spawn(process.execPath, ["--import", "tsx", "sample/start.ts"], {
    cwd: ROOT,
    env: childEnv({ PORT: "0", ...env }),
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout.on("data", (chunk: Buffer) => {
    output += chunk;
  });
  child.stderr.on("data", (chunk: Buffer) => {
    output += chunk;
  });
  const exited = once(child, "exit");
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`sample did not start:\n${output}`)), 30_000);
    child.stdout.on("data", () => {
      const match = /listening on (http:\/\/\S+)/.exec(output);
      if (match?.[1]) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    });
    exited.then(() => {
      clearTimeout(timer);
      reject(new Error(`sample exited before listening:\n${output}`));
    });
  });
  return {
    url,
    wsUrl: `${url.replace("http", "ws")}/hub`,
    process: child,
    output: () => output,
    async stop(signal = "SIGTERM") {
      if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
      child.kill(signal);
      const [code] = await exited;
      return code as number | null;
    },
  };
}

export interface AdminResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `sample/admin.ts` (what `npm run admin` runs) as a child process. */
export async function admin(
  env: Record<string, string | undefined>,
  ...args: string[]
): Promise<AdminResult> {
  const child = spawn(process.execPath, ["--import", "tsx", "sample/admin.ts", ...args], {
    cwd: ROOT,
    env: childEnv(env),
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (chunk: Buffer) => {
    stdout += chunk;
  });
  child.stderr.on("data", (chunk: Buffer) => {
    stderr += chunk;
  });
  const [code] = await once(child, "exit");
  return { code: code as number | null, stdout, stderr };
}

/** Signs a token the way a real issuer would; claims and options can be bent for negative tests. */
export function token(
  env: SampleEnv,
  sub: string | undefined,
  options: jwt.SignOptions = {},
  secret: string = env.JWT_SECRET,
): string {
  return jwt.sign(sub === undefined ? {} : { sub }, secret, {
    algorithm: "HS256",
    expiresIn: 600,
    issuer: "hub-membership-sample",
    audience: "hub-membership-sample",
    ...options,
  });
}

export type ServerMessage = { type: string; [key: string]: unknown };

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Matches the `removed` message of `group`. */
export const isRemoved = (group: string) => (m: ServerMessage) =>
  m.type === "removed" && m.group === group;

/** Runs `admin grant` and expects it to succeed. */
export async function grant(env: SampleEnv, user: string, group: string, ...options: string[]) {
  const result = await admin(env, "grant", user, group, ...options);
  expect(result.code, result.stderr).toBe(0);
}

/** Records what a client receives and waits for it. */
export abstract class Recorder {
  readonly messages: ServerMessage[] = [];
  #waiters: Array<() => void> = [];

  protected abstract get isClosed(): boolean;

  protected record(message: ServerMessage): void {
    this.messages.push(message);
    for (const wake of this.#waiters.splice(0)) wake();
  }

  get welcome(): ServerMessage {
    return this.messages.find((m) => m.type === "welcome") as ServerMessage;
  }

  /** Waits for the first message (received so far or later) that `matches`. */
  async next(matches: (m: ServerMessage) => boolean, timeout = 10_000): Promise<ServerMessage> {
    const deadline = Date.now() + timeout;
    for (;;) {
      const found = this.messages.find(matches);
      if (found) return found;
      if (this.isClosed) throw new Error("socket closed while waiting");
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out; received: ${JSON.stringify(this.messages)}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  abstract close(): void;
}

/** A real WebSocket client that records every frame it receives. */
export class Client extends Recorder {
  readonly ws: WebSocket;
  readonly closed: Promise<{ code: number; reason: string }>;

  private constructor(ws: WebSocket) {
    super();
    this.ws = ws;
    this.closed = new Promise((resolve) =>
      ws.once("close", (code, reason) => resolve({ code, reason: reason.toString() })),
    );
    ws.on("message", (data, isBinary) => {
      // The protocol is JSON in text frames: a binary frame is a bug, recorded so tests fail.
      this.record(
        isBinary ? { type: "BINARY FRAME" } : (JSON.parse(data.toString()) as ServerMessage),
      );
    });
  }

  protected get isClosed(): boolean {
    return this.ws.readyState === WebSocket.CLOSED;
  }

  /** Connects with the token in the Authorization header (or the query string) and waits for `welcome`. */
  static async connect(
    wsUrl: string,
    bearer: string,
    via: "header" | "query" = "header",
  ): Promise<Client> {
    const ws =
      via === "header"
        ? new WebSocket(wsUrl, { headers: { authorization: `Bearer ${bearer}` } })
        : new WebSocket(`${wsUrl}?access_token=${encodeURIComponent(bearer)}`);
    const client = new Client(ws);
    await client.next((m) => m.type === "welcome");
    return client;
  }

  send(message: unknown): void {
    this.ws.send(typeof message === "string" ? message : JSON.stringify(message));
  }

  close(): void {
    this.ws.close();
  }
}

/** The HTTP status a WebSocket upgrade is refused with, or "open" if it is accepted. */
export function upgradeStatus(
  url: string,
  headers: Record<string, string> = {},
): Promise<number | "open"> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers });
    ws.once("unexpected-response", (_req, res) => {
      resolve(res.statusCode ?? 0);
      ws.terminate();
    });
    ws.once("open", () => {
      resolve("open");
      ws.close();
    });
    ws.once("error", (e) => reject(e));
  });
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
