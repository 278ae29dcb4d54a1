import { once } from "node:events";
import { createServer, type IncomingMessage, type Server } from "node:http";
import { type AddressInfo, connect, type Socket } from "node:net";
import { HubConnectionBuilder, LogLevel } from "@microsoft/signalr";
import fc from "fast-check";
import { Server as IoServer } from "socket.io";
import { io as ioClient } from "socket.io-client";
import { expect, inject } from "vitest";
import WebSocket, { WebSocketServer } from "ws";
import { accessTokenOf, bindSignalR, HubError } from "../../adapters/hubs/signalr.js";
import { bindSocketIo } from "../../adapters/hubs/socket-io.js";
import { bindWs } from "../../adapters/hubs/ws.js";
import {
  AzureTableMembershipStore,
  InMemoryMembershipStore,
  type MembershipStore,
} from "../../adapters/index.js";
import {
  adminIn,
  Client,
  NO_RATE_LIMITS,
  type RunningSample,
  type SampleEnv,
  SignalRClient,
  sampleEnv,
  startSample,
  token,
} from "../support/sample.js";
import { IoClient } from "../support/socket-io.js";
import { expand, type RawRequest, type Tokens } from "./arbitraries.js";

// ---------------------------------------------------------------------------------------------
// Running a property

/** The seed of every property (FUZZ_SEED), so a failure replays. */
export const FUZZ_SEED = Number(process.env.FUZZ_SEED ?? 42);

/** Inputs per property: `fallback` by default, FUZZ_RUNS to run longer. */
export const runs = (fallback: number) => Number(process.env.FUZZ_RUNS ?? fallback);

/**
 * Runs `property` `numRuns` times from FUZZ_SEED, `examples` (inputs that broke a server once)
 * first. A failure is shrunk to a small counterexample
 * until `shrinkMs` past the runs' expected time (each failing candidate may wait out the 3 s
 * answer bound, or restart the sample), then reported with its seed, path and error.
 */
export async function fuzz<Ts extends [unknown, ...unknown[]]>(
  property: fc.IAsyncPropertyWithHooks<Ts>,
  numRuns: number,
  options: { perRunMs: number; shrinkMs?: number; examples?: Ts[] },
): Promise<void> {
  const limit = numRuns * options.perRunMs + (options.shrinkMs ?? 60_000);
  const details = await fc.check(property, {
    seed: FUZZ_SEED,
    numRuns,
    examples: options.examples ?? [],
    plugins: [
      fc.interruptAfterTimeLimit(limit),
      fc.timeout(Math.max(30_000, options.perRunMs * 4)),
    ],
  });
  if (details.failed) {
    const { errorInstance: error } = details;
    const cause = error instanceof Error ? (error.stack ?? error.message) : String(error);
    throw new Error(`${fc.defaultReportMessage(details)}\nWhat went wrong: ${cause}`);
  }
  if (details.interrupted)
    console.warn(`fuzz: interrupted after ${details.numRuns} of ${numRuns} inputs (time limit)`);
}

/** The vitest timeout of a test running `fuzz` with these numbers. */
export const testTimeout = (numRuns: number, perRunMs: number, shrinkMs = 60_000) =>
  numRuns * perRunMs + shrinkMs + 90_000;

/** `promise`, or a rejection saying that `what` did not come within `ms`. */
export async function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: did not come within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------------------------
// Raw TCP

/** What a server did with a request: a status line, or closing the connection. */
export type Answer = ({ status: number; line: string } | { closed: "end" | "reset" }) & {
  /** The client's port: which of the server's connections was this one. */
  client: number;
};

/** The answer bound for HTTP requests and upgrades. */
export const ANSWER_MS = 3_000;

/**
 * Sends `bytes` on a new TCP connection and resolves to the server's answer: the status line it
 * starts with, or its closing the connection. Rejects if nothing comes within `bound`, if what
 * comes is not HTTP, or if nothing listens.
 */
export function exchange(port: number, bytes: Buffer, bound = ANSWER_MS): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, "127.0.0.1");
    let received = Buffer.alloc(0);
    let connected = false;
    let client = 0;
    const finish = (outcome: Omit<Answer, "client"> | Error) => {
      clearTimeout(timer);
      socket.destroy();
      if (outcome instanceof Error) reject(outcome);
      else resolve({ ...outcome, client } as Answer);
    };
    const timer = setTimeout(() => {
      const got = received.toString("latin1").slice(0, 120);
      finish(
        new Error(`no answer within ${bound} ms${got ? ` (received ${JSON.stringify(got)})` : ""}`),
      );
    }, bound);
    socket.on("connect", () => {
      connected = true;
      client = socket.localPort ?? 0;
      socket.write(bytes, () => {});
    });
    socket.on("data", (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      const text = received.toString("latin1");
      const status = /^HTTP\/1\.[01] (\d{3})[^\r\n]*/.exec(text);
      if (status) finish({ status: Number(status[1]), line: status[0] });
      else if (text.length >= 16 || (text.length > 0 && !"HTTP/1.1 ".startsWith(text.slice(0, 9))))
        finish(new Error(`not an HTTP answer: ${JSON.stringify(text.slice(0, 120))}`));
    });
    socket.on("end", () => finish({ closed: "end" }));
    socket.on("error", (error: NodeJS.ErrnoException) => {
      if (!connected) finish(new Error(`nothing listens on port ${port}: ${error.code}`));
      else finish({ closed: "reset" });
    });
    socket.on("close", () => finish({ closed: "reset" }));
  });
}

// ---------------------------------------------------------------------------------------------
// Raw WebSockets

/** A WebSocket client that sends frames as given and records every message it receives. */
export class RawSocket {
  readonly received: Array<{ text: string; binary: boolean }> = [];
  closed: { code: number; reason: string } | undefined;
  readonly #ws: WebSocket;
  #wake: Array<() => void> = [];

  private constructor(ws: WebSocket) {
    this.#ws = ws;
    ws.on("message", (data: Buffer, binary: boolean) => {
      this.received.push({ text: data.toString(), binary });
      for (const wake of this.#wake.splice(0)) wake();
    });
    ws.on("close", (code, reason) => {
      this.closed = { code, reason: reason.toString() };
      for (const wake of this.#wake.splice(0)) wake();
    });
    ws.on("error", () => {}); // a close follows
  }

  /** Opens `url` (refused upgrades reject with their status). */
  static async open(url: string, headers: Record<string, string> = {}): Promise<RawSocket> {
    const ws = new WebSocket(url, { headers });
    const socket = new RawSocket(ws);
    await within(
      5_000,
      `opening ${url}`,
      new Promise<void>((resolve, reject) => {
        ws.once("open", () => resolve());
        ws.once("error", reject);
        ws.once("unexpected-response", (_request, response: IncomingMessage) =>
          reject(new Error(`${url} refused the upgrade: ${response.statusCode}`)),
        );
      }),
    );
    return socket;
  }

  /** Sends a frame: text, or binary; a Buffer as text goes as it is, UTF-8 or not. */
  send(data: string | Buffer, binary = false): void {
    if (this.#ws.readyState === WebSocket.OPEN) this.#ws.send(data, { binary }, () => {});
  }

  /** Waits until `done(received)` holds ("done") or the server closed ("closed"), within `ms`. */
  async until(
    done: (received: RawSocket["received"]) => boolean,
    what: string,
    ms = 10_000,
  ): Promise<"done" | "closed"> {
    const deadline = Date.now() + ms;
    for (;;) {
      if (done(this.received)) return "done";
      if (this.closed) return "closed";
      const left = deadline - Date.now();
      if (left <= 0)
        throw new Error(
          `${what}: neither came nor was the connection closed within ${ms} ms; received ` +
            JSON.stringify(this.received.map((m) => m.text.slice(0, 200)).slice(-10)),
        );
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#wake.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /** What was received, for a failure's message. */
  describe(): string {
    return `${JSON.stringify(this.received.map((m) => m.text.slice(0, 200)).slice(-10))}, closed: ${JSON.stringify(this.closed)}`;
  }

  close(): void {
    this.#ws.terminate();
  }
}

// ---------------------------------------------------------------------------------------------
// Crashes

/** Unhandled rejections and uncaught exceptions in this process while it watches. */
export function watchProcessErrors() {
  const errors: unknown[] = [];
  const record = (error: unknown) => errors.push(error);
  process.on("unhandledRejection", record);
  process.on("uncaughtException", record);
  return {
    /** Fails with the errors seen since the last call, if any. */
    async check(): Promise<void> {
      // Rejections are reported after the microtasks that could still handle them.
      await new Promise((resolve) => setImmediate(resolve));
      await new Promise((resolve) => setImmediate(resolve));
      const seen = errors.splice(0);
      if (seen.length > 0)
        throw new Error(
          `unhandled in the server's process: ${seen.map((e) => (e instanceof Error ? e.stack : String(e))).join("\n")}`,
        );
    },
    stop() {
      process.off("unhandledRejection", record);
      process.off("uncaughtException", record);
    },
  };
}

/**
 * Lines of a process's output that say it failed: a stack trace, an error printed whole,
 * "Unhandled", "uncaught", a process warning, pino's fatal level.
 */
export function fatalLines(output: string): string[] {
  return output.split("\n").filter((line) => {
    if (line.startsWith("{")) {
      try {
        return (JSON.parse(line) as { level?: number }).level === 60;
      } catch {
        return true;
      }
    }
    return (
      /^\s+at\s/.test(line) || // a stack frame
      /^\w*(Error|Exception)\b( \[\w+\])?:/.test(line) || // "TypeError: …", "Error [ERR_…]: …"
      /\b(unhandled|uncaught)\b/i.test(line) ||
      /^node:internal|^\(node:\d+\) \w*Warning/.test(line)
    );
  });
}

// ---------------------------------------------------------------------------------------------
// The store

/** Every membership, as sorted JSON `[userId, group, expiresAt]` triples. */
export async function memberships(store: MembershipStore): Promise<string[]> {
  const rows: string[] = [];
  for await (const m of store.memberships())
    rows.push(JSON.stringify([m.userId, m.group, m.expiresAt?.toISOString() ?? null]));
  return rows.sort();
}

// ---------------------------------------------------------------------------------------------
// Servers under test

/** A server the suites throw inputs at, and how to tell it still works. */
export interface Target {
  readonly name: string;
  readonly tokens: Tokens;
  readonly store: MembershipStore;
  port(): number;
  url(): string;
  /** Before an input: the server is up (a sample that died is started again). */
  ready(): Promise<void>;
  /**
   * After an input: the server did not die or print a stack trace, nothing went unhandled in
   * this process, it let go of the input's connection from port `client` (in-process servers,
   * whose sockets can be seen), and a normal client still connects and gets its groups.
   */
  healthy(client?: number): Promise<void>;
  /**
   * Whether this target is known to keep the connection of `request` (documented in
   * docs/bindings.md): its release is then not checked, the rest is.
   */
  keeps?(request: RawRequest): boolean;
  /** Stops it; the sample must exit on SIGTERM within 10 s. */
  close(): Promise<void>;
}

/** The normal client's groups, and the fuzzing user's (sorted), in every store. */
export const NORMAL_GROUPS = ["home", "normal-room"];
export const FUZZER_GROUPS = ["den", "home"];

async function grantAll(store: MembershipStore) {
  for (const group of NORMAL_GROUPS) await store.addToGroup("normal", group);
  for (const group of FUZZER_GROUPS) await store.addToGroup("fuzzer", group);
  await store.addToGroup("someone", "private");
}

/** The real sample (`npm start`) as a child process, `HUB=ws` (default) or `HUB=socket.io`. */
export async function sampleTarget(
  hub: "ws" | "socket.io",
): Promise<Target & { readonly env: SampleEnv; readonly sample: () => RunningSample }> {
  const connectionString = inject("azuriteConnectionString");
  const env: SampleEnv = {
    ...sampleEnv(connectionString),
    ...NO_RATE_LIMITS, // inputs, not rate limits (those have their own tests)
    HUB: hub,
    MAX_CONNECTIONS_PER_USER: "100000",
    LOG_LEVEL: "warn",
  };
  const store = AzureTableMembershipStore.fromConnectionString(connectionString, {
    tableName: env.MEMBERSHIP_TABLE,
  });
  await grantAll(store);
  let sample = await startSample(env);
  let seen = 0;
  const alive = () => sample.process.exitCode === null && sample.process.signalCode === null;
  const target = {
    name: `the sample (HUB=${hub})`,
    env,
    store,
    tokens: {
      valid: token(env, "fuzzer"),
      expired: token(env, "fuzzer", { expiresIn: -10 }),
      forged: token(env, "fuzzer", {}, "f".repeat(40)),
    },
    sample: () => sample,
    port: () => Number(new URL(sample.url).port),
    url: () => sample.url,
    async ready() {
      if (alive()) return;
      // A crash fails the input that caused it (in `healthy`); the next input gets a new server.
      sample = await startSample(env);
      seen = 0;
    },
    async healthy() {
      const output = sample.output();
      const fatal = fatalLines(output.slice(seen));
      seen = output.length;
      if (!alive() || fatal.length > 0) {
        // Give a dying process a moment to finish its last words.
        await sleep(200);
        const exit = sample.process.exitCode ?? sample.process.signalCode;
        throw new Error(
          `the sample ${alive() ? "printed a failure" : `exited (${exit})`}:\n${fatal.join("\n")}\n` +
            `--- its output ends with:\n${sample.output().slice(-2_000)}`,
        );
      }
      const bearer = token(env, "normal");
      // A normal client of each protocol served connects and is welcomed with its groups.
      const welcomed = async (
        name: string,
        connecting: Promise<Client | SignalRClient | IoClient>,
      ) => {
        const client = await within(5_000, `a normal ${name} client`, connecting);
        client.close();
        expect(client.welcome.groups, `the normal ${name} client's welcome`).toEqual(NORMAL_GROUPS);
      };
      if (hub === "ws") {
        await welcomed("ws", Client.connect(sample.wsUrl, bearer));
        await welcomed("SignalR", SignalRClient.connect(sample.url, bearer));
      } else await welcomed("Socket.IO", IoClient.connect(sample.url, bearer));
    },
    /** Stops it with SIGTERM, as Ctrl-C would: failing if it does not exit within 10 s. */
    async close() {
      try {
        const code = await within(
          10_000,
          "the sample's exit on SIGTERM after the inputs",
          sample.stop(),
        );
        expect(code, "the sample's exit code after SIGTERM").toBe(0);
      } finally {
        sample.process.kill("SIGKILL");
        await store.close();
      }
    },
  };
  return target;
}

/** Tokens of the in-process servers: `tok-<user>` is `<user>` (their `userOf`). */
const IN_PROCESS_TOKENS: Tokens = { valid: "tok-fuzzer", expired: "tok-", forged: "TOK-fuzzer" };

/** The quick starts' "your auth": `tok-<user>` is `<user>`, anything else nobody. */
const userOf = (credential: unknown): string | undefined =>
  typeof credential === "string" ? /^tok-([\w-]+)$/.exec(credential)?.[1] : undefined;

const listening = async (server: Server) => {
  if (!server.listening) await once(server, "listening");
  return (server.address() as AddressInfo).port;
};

/**
 * The server side of every connection to `server`, by the client's port, to check that a
 * server lets go of a socket whose client left: one it forgets keeps `server.close()` waiting
 * for ever.
 */
function trackSockets(server: Server) {
  const open = new Map<number, Socket>();
  server.on("connection", (socket: Socket) => {
    const port = socket.remotePort ?? 0;
    open.set(port, socket);
    socket.once("close", () => {
      if (open.get(port) === socket) open.delete(port);
    });
  });
  return {
    /** Ends what the server kept (a target that `keeps` some), so that it can close. */
    destroyAll(): void {
      for (const socket of open.values()) socket.destroy();
    },
    async released(client: number, bound = 2_000): Promise<void> {
      const deadline = Date.now() + bound;
      while (open.has(client)) {
        if (Date.now() > deadline)
          throw new Error(
            `the server still holds the input's connection ${bound} ms after its client left`,
          );
        await sleep(20);
      }
    },
  };
}

/** What the in-process targets have in common. */
async function inProcess(
  name: string,
  store: MembershipStore,
  server: Server,
  normalClient: (url: string) => Promise<string[]>,
  close: () => Promise<void>,
): Promise<Target> {
  const sockets = trackSockets(server);
  const port = await listening(server);
  const url = `http://127.0.0.1:${port}`;
  const errors = watchProcessErrors();
  await grantAll(store);
  return {
    name,
    store,
    tokens: IN_PROCESS_TOKENS,
    port: () => port,
    url: () => url,
    async ready() {},
    async healthy(client) {
      await errors.check();
      if (client !== undefined) await sockets.released(client);
      const groups = await within(5_000, `a normal client of ${name}`, normalClient(url));
      expect(groups, "the normal client's groups").toEqual(NORMAL_GROUPS);
      await errors.check();
    },
    async close() {
      errors.stop();
      sockets.destroyAll();
      await close();
    },
  };
}

/** The quick start's "your protocol": `{ group, text }` in JSON, undefined if malformed. */
function parse(data: unknown): { group: string; text: string } | undefined {
  try {
    const { group, text } = JSON.parse(String(data)) as Record<string, unknown>;
    return typeof group === "string" && typeof text === "string" ? { group, text } : undefined;
  } catch {
    return undefined;
  }
}

/** README.md's "Quick start: `ws`", on a free port, with `tok-<user>` tokens. */
export async function wsQuickStart(): Promise<Target> {
  const wss = new WebSocketServer({ noServer: true });
  // From here to `server.on("upgrade", …)`: the quick start as README.md shows it.
  const store = new InMemoryMembershipStore();
  const hub = bindWs(wss, {
    store,
    userIdOf: (request) => userOf(bearerOf(request.headers.authorization)), // undefined: 401, no socket
    onConnection: ({ id }, groups) => hub.send(id, JSON.stringify({ welcome: groups })),
    onLeave: ({ id }, group, reason) => hub.send(id, JSON.stringify({ removed: group, reason })),
    onMessage: async ({ id, userId }, data) => {
      const { group, text } = parse(data) ?? {}; // never trust a frame: undefined if malformed
      if (group !== undefined && hub.isInGroup(id, group))
        await hub.broadcast(group, JSON.stringify({ userId, text }));
    },
  });
  const server = createServer((_, res) => res.writeHead(426).end()).listen(0, "127.0.0.1");
  server.on("upgrade", (request, socket, head) => void hub.handleUpgrade(request, socket, head));

  return inProcess(
    "the ws quick start",
    store,
    server,
    async (url) => {
      const ws = new WebSocket(`${url.replace("http", "ws")}/`, {
        headers: { authorization: "Bearer tok-normal" },
      });
      try {
        const [data] = (await once(ws, "message")) as [Buffer];
        return (JSON.parse(String(data)) as { welcome: string[] }).welcome;
      } finally {
        ws.terminate();
      }
    },
    async () => {
      for (const client of wss.clients) client.terminate();
      server.closeAllConnections();
      server.close();
      await hub.close();
      await store.close();
    },
  );
}

/** The quick start's `userOf(request.headers.authorization)`: its scheme is the app's to choose. */
const bearerOf = (authorization: string | undefined) =>
  /^Bearer (\S+)$/.exec(authorization ?? "")?.[1];

/** README.md's "Quick start: SignalR clients" (path `/chat`), on a free port. */
export async function signalrQuickStart(): Promise<Target> {
  const wss = new WebSocketServer({ noServer: true });
  const store = new InMemoryMembershipStore();
  // From here to `server.on("upgrade", …)`: the quick start as README.md shows it.
  const hub = bindSignalR(wss, {
    store, // or AzureTableMembershipStore
    path: "/chat",
    userIdOf: (request: IncomingMessage) => userOf(accessTokenOf(request)), // undefined: 401, no socket
    onConnection: ({ id }, groups) => hub.send(id, "welcome", { groups }),
    onLeave: ({ id }, group, reason) => hub.send(id, "removed", { group, reason }),
    methods: {
      Send: async ({ id, userId }, group, text) => {
        if (typeof group !== "string" || !hub.isInGroup(id, group))
          throw new HubError("not_member");
        await hub.sendToGroup(group, "message", { group, from: userId, text });
      },
    },
  });
  const server = createServer((req, res) => void hub.handleRequest(req, res)).listen(
    0,
    "127.0.0.1",
  );
  server.on("upgrade", (request, socket, head) => void hub.handleUpgrade(request, socket, head));

  return inProcess(
    "the SignalR quick start",
    store,
    server,
    async (url) => {
      const connection = new HubConnectionBuilder()
        .withUrl(`${url}/chat`, { accessTokenFactory: () => "tok-normal" })
        .configureLogging(LogLevel.None)
        .build();
      const welcome = new Promise<string[]>((resolve) =>
        connection.on("welcome", ({ groups }: { groups: string[] }) => resolve(groups)),
      );
      try {
        await connection.start();
        return await welcome;
      } finally {
        await connection.stop();
      }
    },
    async () => {
      for (const client of wss.clients) client.terminate();
      server.closeAllConnections();
      server.close();
      await hub.close();
      await store.close();
    },
  );
}

/** README.md's "Quick start: Socket.IO", on a free port, on an in-memory store. */
export async function socketIoQuickStart(): Promise<Target> {
  const store = new InMemoryMembershipStore();
  // From here to the end of `io.on("connection", …)`: the quick start as README.md shows it.
  const io = new IoServer(
    createServer((_, res) => res.writeHead(404).end()).listen(0, "127.0.0.1"),
  );
  io.use((socket, next) => {
    socket.data.userId = userOf(socket.handshake.auth.token);
    next(socket.data.userId ? undefined : new Error("unauthorized"));
  });
  const sync = bindSocketIo(io, {
    store,
    userIdOf: (socket) => socket.data.userId, // the socket joins its stored groups' rooms first
    onLeave: (socket, group, reason) => socket.emit("removed", { group, reason }),
  });
  io.on("connection", (socket) => {
    socket.on("send", (message) => {
      const { group, text } = Object(message); // a client may send anything, or nothing
      if (sync.isInGroup(socket.id, group)) io.to(group).emit("message", { group, text });
    });
  });

  return inProcess(
    "the Socket.IO quick start",
    store,
    io.httpServer as Server,
    async (url) => {
      // The quick start has no welcome: the normal client's groups are its rooms, and a message
      // to one of them reaching it says it is in there.
      const socket = ioClient(url, {
        transports: ["websocket"],
        reconnection: false,
        forceNew: true,
        auth: { token: "tok-normal" },
      });
      try {
        await new Promise<void>((resolve, reject) => {
          socket.once("connect", resolve);
          socket.once("connect_error", reject);
        });
        const heard = new Promise((resolve) => socket.once("message", resolve));
        socket.emit("send", { group: "home", text: "still there?" });
        await heard;
        return sync.groupsOfConnection(socket.id ?? "");
      } finally {
        socket.disconnect();
      }
    },
    async () => {
      await io.close();
      await sync.close();
      await store.close();
    },
  ).then((target) => ({
    ...target,
    // engine.io ends an upgrade to another path after 1 s but never destroys it, so a client
    // still sending keeps it (docs/bindings.md; the sample refuses those upgrades itself).
    keeps: (request: RawRequest) =>
      request.headers.some(([name]) => /^upgrade$/i.test(expand(name))) &&
      !expand(request.target).startsWith("/socket.io/"),
  }));
}

// ---------------------------------------------------------------------------------------------
// The admin script

export interface AdminRun {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/**
 * Runs `sample/admin.ts` (what `npm run admin` runs) in `cwd`, killed past `bound` ms (a hang
 * fails the input instead of the suite).
 */
export async function runAdmin(
  env: SampleEnv,
  args: string[],
  cwd: string,
  bound = 30_000,
): Promise<AdminRun> {
  const started = Date.now();
  const { code, stdout, stderr } = await adminIn(env, args, { cwd, timeoutMs: bound });
  if (code === null)
    throw new Error(`the admin script did not exit within ${bound} ms:\n${stderr}`);
  return { code, stdout, stderr, ms: Date.now() - started };
}
