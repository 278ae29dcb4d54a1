import { once } from "node:events";
import { createServer, type IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import {
  HttpTransportType,
  type HubConnection,
  HubConnectionBuilder,
  LogLevel,
} from "@microsoft/signalr";
import { afterEach, describe, expect, it } from "vitest";
import { WebSocket, WebSocketServer } from "ws";
import {
  accessTokenOf,
  bindSignalR,
  HubError,
  type SignalRBindingOptions,
} from "../adapters/hubs/signalr.js";
import { InMemoryMembershipStore } from "../adapters/index.js";
import { type HarnessConnection, testHubBinding } from "../adapters/testing/index.js";

type Message = { group: string; text: string };
const RS = "\u001e";

/** The user a request acts for: here its access token is the user id itself. */
const tokenOf = (request: IncomingMessage) => accessTokenOf(request);

/** A SignalR hub at /hub on a fresh HTTP server; `options` override the defaults. */
async function serve(options: Partial<SignalRBindingOptions<WebSocket>> = {}) {
  const http = createServer();
  const wss = new WebSocketServer({ noServer: true });
  const errors: unknown[] = [];
  const hub = bindSignalR(wss, {
    store: new InMemoryMembershipStore(),
    path: "/hub",
    userIdOf: tokenOf,
    methods: {},
    onConnection: (connection, groups) =>
      hub.send(connection.id, "welcome", { connectionId: connection.id, groups }),
    onError: (error) => errors.push(error),
    ...options,
  });
  http.on("request", (request, response) => {
    void hub.handleRequest(request, response).then((handled) => {
      if (!handled) response.writeHead(404).end();
    });
  });
  http.on("upgrade", (request, socket, head) => void hub.handleUpgrade(request, socket, head));
  http.listen(0, "127.0.0.1");
  await once(http, "listening");
  const url = `http://127.0.0.1:${(http.address() as AddressInfo).port}/hub`;
  return {
    hub,
    url,
    errors,
    async close() {
      for (const client of wss.clients) client.terminate();
      await hub.close();
      http.closeAllConnections();
      http.close();
    },
  };
}

/** The official client, connected as `userId`; resolves once its welcome arrived. */
async function official(
  url: string,
  userId: string,
  configure: (builder: HubConnectionBuilder) => HubConnectionBuilder = (b) => b,
): Promise<{ connection: HubConnection; welcome: { connectionId: string; groups: string[] } }> {
  const connection = configure(
    new HubConnectionBuilder()
      .withUrl(url, { accessTokenFactory: () => userId })
      .configureLogging(LogLevel.None),
  ).build();
  const welcome = new Promise<{ connectionId: string; groups: string[] }>((resolve) =>
    connection.on("welcome", resolve),
  );
  await connection.start();
  return { connection, welcome: await welcome };
}

/** A raw WebSocket speaking the protocol by hand, for what the official client never sends. */
async function raw(
  url: string,
  userId: string,
  handshake = `{"protocol":"json","version":1}${RS}`,
) {
  const socket = new WebSocket(`${url.replace("http", "ws")}?access_token=${userId}`);
  const records: Array<Record<string, unknown>> = [];
  socket.on("message", (data) => {
    for (const part of data.toString().split(RS).filter(Boolean)) records.push(JSON.parse(part));
  });
  const closed = new Promise<number>((resolve) => socket.on("close", (code) => resolve(code)));
  await once(socket, "open");
  socket.send(handshake);
  return { socket, records, closed };
}

testHubBinding("bindSignalR (the official @microsoft/signalr client)", {
  async create(store) {
    const server = await serve({ store });
    const clients: HubConnection[] = [];
    return {
      async connect(userId, onOpening) {
        const connection = new HubConnectionBuilder()
          .withUrl(server.url, { accessTokenFactory: () => userId })
          .configureLogging(LogLevel.None)
          .build();
        clients.push(connection);
        const received: Message[] = [];
        connection.on("message", (message: Message) => received.push(message));
        const welcomed = new Promise<void>((resolve, reject) => {
          connection.on("welcome", () => resolve());
          connection.onclose((error) => reject(error ?? new Error("closed")));
        });
        const started = connection.start();
        onOpening?.(() => connection.stop());
        await started;
        await welcomed;
        return { received, close: () => connection.stop() } satisfies HarnessConnection;
      },
      broadcast: (group, text) => server.hub.sendToGroup(group, "message", { group, text }),
      grant: (userId, group, options) => server.hub.grant(userId, group, options),
      revoke: (userId, group) => server.hub.revoke(userId, group),
      async close() {
        await Promise.all(clients.map((client) => client.stop()));
        await server.close();
      },
    };
  },
});

describe("bindSignalR: the protocol, with the official client", () => {
  const servers: Array<{ close(): Promise<void> }> = [];
  const clients: HubConnection[] = [];
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => client.stop()));
    await Promise.all(servers.splice(0).map((server) => server.close()));
  });
  const start = async (options: Parameters<typeof serve>[0] = {}) => {
    const server = await serve(options);
    servers.push(server);
    return server;
  };
  const connect = async (...args: Parameters<typeof official>) => {
    const client = await official(...args);
    clients.push(client.connection);
    return client;
  };

  it("negotiates, welcomes with the stored groups, and completes invocations with results and errors", async () => {
    const store = new InMemoryMembershipStore();
    await store.addToGroup("Alice", "Room/#1");
    const server = await start({
      store,
      methods: {
        Echo: (_connection, text) => `${String(text)}!`,
        Nothing: () => undefined,
        Refuse: () => {
          throw new HubError("not_member");
        },
        Crash: () => {
          throw new Error("a secret detail");
        },
      },
    });
    const { connection, welcome } = await connect(server.url, "Alice");
    expect(welcome.groups).toEqual(["Room/#1"]);
    expect(welcome.connectionId).toBe(connection.connectionId);
    expect(await connection.invoke("Echo", "hi")).toBe("hi!");
    expect(await connection.invoke("echo", "case")).toBe("case!"); // as ASP.NET Core matches
    expect(await connection.invoke("Nothing")).toBeNull();
    await expect(connection.invoke("Refuse")).rejects.toThrow("not_member");
    await expect(connection.invoke("Crash")).rejects.toThrow(
      "An unexpected error occurred invoking 'Crash' on the server.",
    );
    expect(server.errors).toEqual([new Error("a secret detail")]);
    await expect(connection.invoke("Missing", 1)).rejects.toThrow("Unknown hub method 'Missing'.");
    expect(await connection.invoke("Echo", "still here")).toBe("still here!");
  });

  it("start() resolves only once the connection is in its stored groups", async () => {
    const store = new InMemoryMembershipStore();
    await store.addToGroup("Zoe", "room");
    // A slow read of the user's groups: start() must wait for it.
    const read = store.groupsOf.bind(store);
    store.groupsOf = async (userId) => {
      await new Promise((resolve) => setTimeout(resolve, 300));
      return read(userId);
    };
    const isIn: { check?: (id: string) => boolean } = {};
    const server = await start({
      store,
      methods: { InRoom: ({ id }) => isIn.check?.(id) ?? false },
    });
    isIn.check = (id) => server.hub.isInGroup(id, "room");
    const connection = new HubConnectionBuilder()
      .withUrl(server.url, { accessTokenFactory: () => "Zoe" })
      .configureLogging(LogLevel.None)
      .build();
    clients.push(connection);
    await connection.start();
    expect(server.hub.isInGroup(connection.connectionId ?? "", "room")).toBe(true);
    expect(await connection.invoke("InRoom")).toBe(true);
  });

  it("connects without negotiation too, and refuses a missing token with 401 before any socket", async () => {
    const server = await start();
    const { welcome } = await connect(server.url, "bob", (b) =>
      b.withUrl(server.url, {
        accessTokenFactory: () => "bob",
        skipNegotiation: true,
        transport: HttpTransportType.WebSockets,
      }),
    );
    expect(welcome.groups).toEqual([]);
    const negotiate = await fetch(`${server.url}/negotiate?negotiateVersion=1`, { method: "POST" });
    expect(negotiate.status).toBe(401);
    const refused = new HubConnectionBuilder()
      .withUrl(server.url)
      .configureLogging(LogLevel.None)
      .build();
    await expect(refused.start()).rejects.toThrow(/401/);
    const upgrade = new WebSocket(server.url.replace("http", "ws"));
    const [, response] = (await once(upgrade, "unexpected-response")) as [unknown, IncomingMessage];
    expect(response.statusCode).toBe(401);
  });

  it("answers negotiate with a connection token that opens one socket, for the user it was given to", async () => {
    const server = await start();
    const negotiated = async (user: string) => {
      const response = await fetch(`${server.url}/negotiate?negotiateVersion=1`, {
        method: "POST",
        headers: { authorization: `Bearer ${user}` },
      });
      expect(response.status).toBe(200);
      return (await response.json()) as Record<string, unknown>;
    };
    const body = await negotiated("carol");
    expect(body).toMatchObject({
      negotiateVersion: 1,
      availableTransports: [{ transport: "WebSockets", transferFormats: ["Text"] }],
    });
    expect(body.connectionToken).not.toBe(body.connectionId);
    const status = async (query: string, user: string) => {
      const socket = new WebSocket(`${server.url.replace("http", "ws")}?${query}`, {
        headers: { authorization: `Bearer ${user}` },
      });
      const [event, response] = (await Promise.race([
        once(socket, "unexpected-response"),
        once(socket, "open").then(() => ["open"]),
      ])) as [unknown, IncomingMessage | undefined];
      socket.terminate();
      return event === "open" ? 101 : response?.statusCode;
    };
    const id = `id=${String(body.connectionToken)}`;
    expect(await status(id, "mallory")).toBe(404); // someone else's token
    expect(await status("id=made-up", "carol")).toBe(404);
    expect(await status(id, "carol")).toBe(101);
    expect(await status(id, "carol")).toBe(409);
    const v0 = await (
      await fetch(`${server.url}/negotiate`, {
        method: "POST",
        headers: { authorization: "Bearer carol" },
      })
    ).json();
    expect(v0).toMatchObject({ negotiateVersion: 0 });
    expect(v0).not.toHaveProperty("connectionToken");
    expect((await fetch(`${server.url}/negotiate`)).status).toBe(405);
  });

  it("closes with an error saying so when the token expires", async () => {
    const server = await start({
      userIdOf: (request) => {
        const user = tokenOf(request);
        return user && { userId: user, expiresAt: Date.now() + 400 };
      },
    });
    const { connection } = await connect(server.url, "dave");
    const [error] = (await new Promise((resolve) => connection.onclose((e) => resolve([e])))) as [
      Error | undefined,
    ];
    expect(error?.message).toContain("token expired");
  });
});

describe("bindSignalR: the protocol by hand", () => {
  const servers: Array<{ close(): Promise<void> }> = [];
  afterEach(async () => {
    await Promise.all(servers.splice(0).map((server) => server.close()));
  });
  const start = async (options: Parameters<typeof serve>[0] = {}) => {
    const server = await serve(options);
    servers.push(server);
    return server;
  };

  it("refuses an unknown protocol in the handshake answer, and closes", async () => {
    const server = await start();
    const client = await raw(server.url, "erin", `{"protocol":"messagepack","version":1}${RS}`);
    expect(await client.closed).toBe(1000);
    expect(client.records).toEqual([
      { error: "Requested protocol 'messagepack' is not available." },
    ]);
  });

  it("closes a connection whose message passes maxMessageBytes, whole or in pieces", async () => {
    const server = await start({ maxMessageBytes: 100, methods: { Ok: () => "ok" } });
    const tooLarge = JSON.stringify({ type: 1, target: "Ok", arguments: ["x".repeat(100)] });
    const whole = await raw(server.url, "kim");
    const pieces = await raw(server.url, "kim");
    await expect.poll(() => whole.records.length + pieces.records.length).toBe(4);
    whole.socket.send(`${tooLarge}${RS}`);
    pieces.socket.send(tooLarge); // no separator yet: it waits, and grows past the limit
    for (const client of [whole, pieces]) {
      expect(await client.closed).toBe(1000);
      expect(client.records.at(-1)).toEqual({
        type: 7,
        error: "The message is larger than the server accepts.",
        allowReconnect: false,
      });
    }
  });

  it("reads several messages in one frame and one message over several frames", async () => {
    const seen: unknown[] = [];
    const server = await start({ methods: { Note: (_c, value) => void seen.push(value) } });
    const client = await raw(server.url, "frank");
    await expect.poll(() => client.records.length).toBe(2); // the handshake answer, the welcome
    const a = JSON.stringify({ type: 1, target: "Note", arguments: [1] });
    const b = JSON.stringify({ type: 1, invocationId: "7", target: "Note", arguments: [2] });
    client.socket.send(`${a}${RS}${b.slice(0, 10)}`);
    client.socket.send(`${b.slice(10)}${RS}`);
    await expect
      .poll(() => client.records.at(-1))
      .toEqual({ type: 3, invocationId: "7", result: null });
    expect(seen).toEqual([1, 2]);
  });

  it("closes a connection that sends a malformed message with an error, and only that one", async () => {
    const server = await start({ methods: { Ok: () => "ok" } });
    const bad = await raw(server.url, "gina");
    const good = await raw(server.url, "gina");
    await expect.poll(() => bad.records.length + good.records.length).toBe(4);
    bad.socket.send(`{"type":1,"target":${RS}`);
    expect(await bad.closed).toBe(1000);
    expect(bad.records.at(-1)).toEqual({
      type: 7,
      error: "The server received a message that is not valid JSON.",
      allowReconnect: false,
    });
    good.socket.send(
      `${JSON.stringify({ type: 1, invocationId: "1", target: "Ok", arguments: [] })}${RS}`,
    );
    await expect
      .poll(() => good.records.at(-1))
      .toEqual({ type: 3, invocationId: "1", result: "ok" });
  });

  it("pings every keep-alive interval, and closes a client silent past the timeout", async () => {
    const server = await start({ keepAliveIntervalMs: 100, clientTimeoutMs: 600 });
    const client = await raw(server.url, "hank");
    await expect.poll(() => client.records.filter((r) => r.type === 6).length).toBeGreaterThan(2);
    expect(await client.closed).toBe(1000);
    expect(client.records.at(-1)).toEqual({
      type: 7,
      error: "Server timeout elapsed without receiving a message from the client.",
      allowReconnect: true,
    });
  });

  it("keeps a client that pings", async () => {
    const server = await start({ keepAliveIntervalMs: 100, clientTimeoutMs: 300 });
    const client = await raw(server.url, "ivy");
    const pinging = setInterval(() => client.socket.send(`{"type":6}${RS}`), 100);
    await new Promise((resolve) => setTimeout(resolve, 900));
    clearInterval(pinging);
    expect(client.socket.readyState).toBe(WebSocket.OPEN);
    client.socket.close();
  });

  it("answers a store outage at connect with a handshake error", async () => {
    const store = new InMemoryMembershipStore();
    const { MembershipError } = await import("../adapters/index.js");
    store.groupsOf = async () => {
      throw new MembershipError("STORE_UNAVAILABLE", "down");
    };
    const server = await start({ store });
    const connection = new HubConnectionBuilder()
      .withUrl(server.url, { accessTokenFactory: () => "jack" })
      .configureLogging(LogLevel.None)
      .build();
    await expect(connection.start()).rejects.toThrow("membership store unavailable");
  });
});
