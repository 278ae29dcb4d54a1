import { once } from "node:events";
import type { IncomingMessage } from "node:http";
import {
  HttpTransportType,
  type HubConnection,
  HubConnectionBuilder,
  JsonHubProtocol,
  LogLevel,
  Subject,
} from "@microsoft/signalr";
import { MessagePackHubProtocol } from "@microsoft/signalr-protocol-msgpack";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { WebSocket, WebSocketServer } from "ws";
import { accessTokenOf, bindSignalR, HubError } from "../adapters/hubs/signalr.js";
import { InMemoryMembershipStore } from "../adapters/index.js";
import { type HarnessConnection, testHubBinding } from "../adapters/testing/index.js";
import { httpRequest, rawRequest, WEBSOCKET_HEADERS } from "./support/raw-http.js";
import { serve, useHubs } from "./support/signalr-hub.js";

type Message = { group: string; text: string };
const RS = "\u001e";

/** The user a request acts for: here its access token is the user id itself. */
const tokenOf = (request: IncomingMessage) => accessTokenOf(request);

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

/** Polls `check` every 10 ms until it holds, for up to 5 s. */
const waitFor = (check: () => boolean) =>
  vi.waitFor(
    () => {
      if (!check()) throw new Error("not yet");
    },
    { timeout: 5_000, interval: 10 },
  );

/** A raw WebSocket speaking the protocol by hand, for what the official client never sends. */
async function raw(
  url: string,
  userId: string,
  handshake: string | string[] = `{"protocol":"json","version":1}${RS}`,
) {
  const socket = new WebSocket(`${url.replace("http", "ws")}?access_token=${userId}`);
  const records: Array<Record<string, unknown>> = [];
  socket.on("message", (data) => {
    for (const part of data.toString().split(RS).filter(Boolean)) records.push(JSON.parse(part));
  });
  const closed = new Promise<number>((resolve) => socket.on("close", (code) => resolve(code)));
  await once(socket, "open");
  for (const frame of [handshake].flat()) socket.send(frame);
  return { socket, records, closed };
}

/** Every transport with every protocol it carries (Server-Sent Events carries text only). */
const CLIENTS = [
  ["WebSockets", "json"],
  ["ServerSentEvents", "json"],
  ["LongPolling", "json"],
  ["WebSockets", "messagepack"],
  ["LongPolling", "messagepack"],
] as const;

for (const [transport, protocol] of CLIENTS)
  testHubBinding(`bindSignalR (the official client over ${transport}, ${protocol})`, {
    async create(store) {
      const server = await serve({ store });
      const clients: HubConnection[] = [];
      return {
        async connect(userId, onOpening) {
          const connection = new HubConnectionBuilder()
            .withUrl(server.url, {
              accessTokenFactory: () => userId,
              transport: HttpTransportType[transport],
            })
            .withHubProtocol(
              protocol === "json" ? new JsonHubProtocol() : new MessagePackHubProtocol(),
            )
            .configureLogging(LogLevel.None)
            .build();
          clients.push(connection);
          const received: Message[] = [];
          connection.on("message", (message: Message) => received.push(message));
          const welcomed = new Promise<void>((resolve, reject) => {
            connection.on("welcome", () => resolve());
            connection.onclose((error) => reject(error ?? new Error("closed")));
          });
          // A start that fails may close the connection too: its failure is start's to report.
          welcomed.catch(() => {});
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
  const { start, track } = useHubs();
  const connect = async (...args: Parameters<typeof official>) => {
    return track(await official(...args));
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
    await expect(connection.invoke("Missing", 1)).rejects.toThrow(
      "Failed to invoke 'Missing' due to an error on the server. HubException: Method does not exist.",
    );
    // ASP.NET Core binds exactly the declared parameters; the generic text hides the detail.
    for (const args of [[], ["a", "b"]])
      await expect(connection.invoke("Echo", ...args)).rejects.toThrow(
        /^.*Failed to invoke 'Echo' due to an error on the server\.$/,
      );
    expect(await connection.invoke("Echo", "still here")).toBe("still here!");
  });

  it("with detailedErrors, tells the client what failed, as EnableDetailedErrors does", async () => {
    const server = await start({
      detailedErrors: true,
      methods: {
        Echo: (_connection, text) => text,
        Crash: () => {
          throw new TypeError("a detail");
        },
      },
    });
    const { connection } = await connect(server.url, "Nina");
    await expect(connection.invoke("Echo", "a", "b")).rejects.toThrow(
      "Failed to invoke 'Echo' due to an error on the server. " +
        "InvalidDataException: Invocation provides 2 argument(s) but target expects 1.",
    );
    await expect(connection.invoke("Crash")).rejects.toThrow(
      "An unexpected error occurred invoking 'Crash' on the server. TypeError: a detail",
    );
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
    track({ connection });
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
      availableTransports: [
        { transport: "WebSockets", transferFormats: ["Text", "Binary"] },
        { transport: "ServerSentEvents", transferFormats: ["Text"] },
        { transport: "LongPolling", transferFormats: ["Text", "Binary"] },
      ],
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

  it("invokes a client method and awaits its result, its error, or says the client never answered", async () => {
    const server = await start();
    const { connection, welcome } = await connect(server.url, "erin");
    connection.on("add", (a: number, b: number) => a + b);
    connection.on("refuse", () => {
      throw new Error("not today");
    });
    connection.on("stall", () => new Promise(() => {}));
    const { hub } = server;
    const id = welcome.connectionId;
    expect(await hub.invokeClient(id, "add", [2, 3])).toBe(5);
    // Several at once, each answered on its own.
    expect(await Promise.all([1, 2, 3].map((n) => hub.invokeClient(id, "add", [n, n])))).toEqual([
      2, 4, 6,
    ]);
    const failure = (promise: Promise<unknown>) =>
      promise.then(
        () => expect.fail("resolved"),
        (error: Error) => [error.constructor.name, error.message],
      );
    expect(await failure(hub.invokeClient(id, "refuse"))).toEqual([
      "HubError",
      expect.stringContaining("not today"),
    ]);
    expect(await failure(hub.invokeClient(id, "nobody"))).toEqual([
      "HubError",
      "Client didn't provide a result.",
    ]);
    expect(await failure(hub.invokeClient(id, "stall", [], { timeoutMs: 200 }))).toEqual([
      "HubError",
      "The client did not answer within 200 ms.",
    ]);
    expect(await failure(hub.invokeClient("nobody-here", "add", [1, 1]))).toEqual([
      "HubError",
      "Connection 'nobody-here' is not connected to this server.",
    ]);
    // The connection goes while a result is awaited: it fails at once, not at its timeout.
    const waiting = failure(hub.invokeClient(id, "stall"));
    await connection.stop();
    expect(await waiting).toEqual([
      "HubError",
      `Connection '${id}' disconnected before it answered.`,
    ]);
  });

  it("streams to the client, item by item, and ends with the completion or the error", async () => {
    let returned = 0;
    const server = await start({
      streams: {
        Counter: async function* (_connection, count) {
          try {
            for (let i = 0; i < (count as number); i++) yield i;
          } finally {
            returned++;
          }
        },
        Failing: async function* () {
          yield "a";
          throw new HubError("ran out");
        },
        Forever: async function* () {
          try {
            for (let i = 0; ; i++) {
              yield i;
              await new Promise((resolve) => setTimeout(resolve, 5));
            }
          } finally {
            returned++;
          }
        },
      },
      methods: { Plain: () => 1 },
    });
    const { connection } = await connect(server.url, "gil");
    const read = (name: string, ...args: unknown[]) =>
      new Promise<{ items: unknown[]; error?: string }>((resolve) => {
        const items: unknown[] = [];
        connection.stream(name, ...args).subscribe({
          next: (item) => items.push(item),
          complete: () => resolve({ items }),
          error: (error: Error) => resolve({ items, error: error.message }),
        });
      });
    expect(await read("Counter", 5)).toEqual({ items: [0, 1, 2, 3, 4] });
    expect(await read("counter", 0)).toEqual({ items: [] });
    expect(await read("Failing")).toEqual({ items: ["a"], error: "ran out" });
    expect(await read("Plain")).toEqual({
      items: [],
      error:
        "The client attempted to invoke the non-streaming 'Plain' method with a streaming invocation.",
    });
    await expect(connection.invoke("Counter", 1)).rejects.toThrow(
      "The client attempted to invoke the streaming 'Counter' method with a non-streaming invocation.",
    );
    expect(returned).toBe(2);
    // A cancel (the subscription disposed) stops the server's generator.
    const items: unknown[] = [];
    const subscription = connection.stream("Forever").subscribe({
      next: (item) => items.push(item),
      complete: () => {},
      error: () => {},
    });
    await vi.waitFor(() => expect(items.length).toBeGreaterThanOrEqual(3));
    subscription.dispose();
    await vi.waitFor(() => expect(returned).toBe(3));
  });

  it("reads a client's upload streams, in order, with the arguments first", async () => {
    const server = await start({
      methods: {
        Sum: async (_connection, label, numbers) => {
          let sum = 0;
          for await (const n of numbers as AsyncIterable<number>) sum += n;
          return `${label as string}: ${sum}`;
        },
        Zip: async (_connection, separator, a, b) => {
          const all: unknown[] = [];
          for await (const x of a as AsyncIterable<unknown>) all.push(x);
          all.push(separator);
          for await (const y of b as AsyncIterable<unknown>) all.push(y);
          return all;
        },
      },
    });
    const { connection } = await connect(server.url, "hal");
    const numbers = new Subject<number>();
    const sum = connection.invoke("Sum", "total", numbers);
    for (let i = 1; i <= 100; i++) numbers.next(i);
    numbers.complete();
    expect(await sum).toBe("total: 5050");
    // Two streams side by side lose the second to the official client (its replaceStreamingParams
    // skips the argument after a stream): an argument between them.
    const [a, b] = [new Subject<string>(), new Subject<string>()];
    const zipped = connection.invoke("Zip", a, "|", b);
    b.next("b1");
    a.next("a1");
    a.complete();
    b.complete();
    expect(await zipped).toEqual(["a1", "|", "b1"]);
    // An upload that fails: the method's loop throws the client's error.
    const failing = new Subject<number>();
    const failed = connection.invoke("Sum", "x", failing);
    failing.next(1);
    failing.error(new Error("client gave up"));
    await expect(failed).rejects.toThrow(/client gave up|unexpected error/);
  });

  it("a hub method may await a result from its own caller", async () => {
    const server = await start({
      methods: {
        Confirm: async (connection, question) =>
          `answered: ${await server.hub.invokeClient(connection.id, "ask", [question], { timeoutMs: 5_000 })}`,
      },
    });
    const { connection } = await connect(server.url, "kim");
    connection.on("ask", (question: string) => `yes to ${question}`);
    expect(await connection.invoke("Confirm", "tea?")).toBe("answered: yes to tea?");
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

describe("bindSignalR: streams under stateful reconnect", () => {
  it("paces a stream by what the client has acked, so a drop right after it still resumes", async () => {
    const server = await serve({
      statefulReconnect: true,
      methods: { Echo: (_c, text) => text },
      streams: {
        Big: async function* () {
          for (let i = 0; i < 150; i++) yield "x".repeat(1_000);
        },
      },
    });
    const { connection } = await official(server.url, "ann", (builder) =>
      builder.withStatefulReconnect(),
    );
    try {
      const id = connection.connectionId;
      let items = 0;
      await new Promise<void>((resolve, reject) =>
        connection
          .stream("Big")
          .subscribe({ next: () => items++, complete: resolve, error: reject }),
      );
      expect(items).toBe(150);
      // 150 KB sent in a burst would outgrow the 100,000-byte replay buffer before the client's
      // once-a-second ack: the connection could then not resume.
      const transport = (connection as unknown as { connection: { transport: unknown } }).connection
        .transport as { _webSocket: { terminate(): void } };
      transport._webSocket.terminate();
      expect(await connection.invoke("Echo", "after the drop")).toBe("after the drop");
      expect(connection.connectionId).toBe(id);
    } finally {
      await connection.stop();
      await server.close();
    }
  });
});

describe("bindSignalR: Server-Sent Events and long polling", () => {
  const { start, track } = useHubs();
  const connect = async (url: string, userId: string, transport: HttpTransportType) => {
    const client = await official(url, userId, (builder) =>
      builder.withUrl(url, { accessTokenFactory: () => userId, transport }),
    );
    return track(client);
  };
  /** Negotiates as `user` and opens a long-polling connection by hand: its token. */
  const longPoll = async (url: string, user: string) => {
    const auth = { authorization: `Bearer ${user}` };
    const negotiated = (await (
      await fetch(`${url}/negotiate?negotiateVersion=1`, { method: "POST", headers: auth })
    ).json()) as { connectionToken: string };
    const at = `${url}?id=${negotiated.connectionToken}`;
    expect((await fetch(at, { headers: auth })).status).toBe(200); // the first poll, at once
    const post = (body: string, as = user) =>
      fetch(at, { method: "POST", headers: { authorization: `Bearer ${as}` }, body });
    const poll = (as = user) => fetch(at, { headers: { authorization: `Bearer ${as}` } });
    return { at, auth, post, poll };
  };

  for (const [name, transport] of [
    ["Server-Sent Events", HttpTransportType.ServerSentEvents],
    ["long polling", HttpTransportType.LongPolling],
  ] as const)
    it(`carries invocations, streams both ways and client results over ${name}`, async () => {
      const server = await start({
        methods: {
          Echo: (_c, text) => `${String(text)}!`,
          Sum: async (_c, numbers) => {
            let sum = 0;
            for await (const n of numbers as AsyncIterable<number>) sum += n;
            return sum;
          },
          Ask: (connection) => server.hub.invokeClient(connection.id, "question", [2]),
        },
        streams: {
          Count: async function* (_c, to) {
            for (let i = 1; i <= Number(to); i++) yield i;
          },
        },
      });
      const { connection } = await connect(server.url, "Ann", transport);
      connection.on("question", (n: number) => n * 21);
      expect(await connection.invoke("Echo", "hi")).toBe("hi!");
      const items: number[] = [];
      await new Promise<void>((resolve, reject) =>
        connection.stream("Count", 300).subscribe({
          next: (n: number) => items.push(n),
          complete: resolve,
          error: reject,
        }),
      );
      expect(items).toEqual(Array.from({ length: 300 }, (_, i) => i + 1));
      const numbers = new Subject<number>();
      const sum = connection.invoke("Sum", numbers);
      for (let n = 1; n <= 10; n++) numbers.next(n);
      numbers.complete();
      expect(await sum).toBe(55);
      expect(await connection.invoke("Ask")).toBe(42);
    });

  it("offers only the configured transports, and refuses the others as ASP.NET Core does", async () => {
    // Server-Sent Events alone: its clients' POSTs and DELETEs are served too.
    const sseOnly = await start({
      transports: ["ServerSentEvents"],
      methods: { Echo: (_c, x) => x },
    });
    const sseClient = await connect(sseOnly.url, "ann", HttpTransportType.ServerSentEvents);
    expect(await sseClient.connection.invoke("Echo", "posted")).toBe("posted");
    const server = await start({ transports: ["LongPolling"] });
    const negotiated = (await (
      await fetch(`${server.url}/negotiate?negotiateVersion=1`, {
        method: "POST",
        headers: { authorization: "Bearer ann" },
      })
    ).json()) as { availableTransports: unknown };
    expect(negotiated.availableTransports).toEqual([
      { transport: "LongPolling", transferFormats: ["Text", "Binary"] },
    ]);
    const sse = await fetch(`${server.url}?id=x&access_token=ann`, {
      headers: { accept: "text/event-stream" },
    });
    expect([sse.status, await sse.text()]).toEqual([
      404,
      "ServerSentEvents transport not supported by this end point type",
    ]);
    const socket = new WebSocket(`${server.url.replace("http", "ws")}?access_token=ann`);
    const [, refused] = (await once(socket, "unexpected-response")) as [unknown, IncomingMessage];
    expect(refused.statusCode).toBe(404);
    const onlyWebSockets = await start({ transports: ["WebSockets"] });
    const client = new HubConnectionBuilder()
      .withUrl(onlyWebSockets.url, {
        accessTokenFactory: () => "ann",
        transport: HttpTransportType.LongPolling,
      })
      .configureLogging(LogLevel.None)
      .build();
    await expect(client.start()).rejects.toThrow(/'WebSockets' is disabled by the client/);
    // The official client skips what negotiate did not offer.
    const { connection } = await connect(
      server.url,
      "ann",
      HttpTransportType.WebSockets | HttpTransportType.LongPolling,
    );
    expect(connection.connectionId).toBeTruthy();
  });

  it("answers a connection's requests only for its own user, one POST at a time, and ends on DELETE", async () => {
    const closed: string[] = [];
    const server = await start({
      methods: { Echo: (_c, text) => text },
      onClose: (connection) => closed.push(connection.userId),
    });
    const lp = await longPoll(server.url, "ann");
    expect((await lp.post(`{"protocol":"json","version":1}${RS}`)).status).toBe(200);
    expect(await (await lp.poll()).text()).toContain(`{}${RS}`);
    // Another user, even with the token, gets nothing and sends nothing: the token is unknown.
    expect((await lp.poll("bob")).status).toBe(404);
    const bobs = await lp.post(
      `{"type":1,"invocationId":"1","target":"Echo","arguments":["x"]}${RS}`,
      "bob",
    );
    expect(bobs.status).toBe(404);
    const poll = lp.poll();
    expect(
      (await lp.post(`{"type":1,"invocationId":"2","target":"Echo","arguments":["ann's"]}${RS}`))
        .status,
    ).toBe(200);
    const answered = await (await poll).text();
    expect(answered).toContain('"invocationId":"2"');
    expect(answered).not.toContain('"invocationId":"1"');
    // A newer poll replaces a waiting one, which is answered 204.
    const waiting = lp.poll();
    await new Promise((resolve) => setTimeout(resolve, 50));
    const newer = lp.poll();
    expect((await waiting).status).toBe(204);
    expect((await fetch(lp.at, { method: "DELETE", headers: lp.auth })).status).toBe(202);
    expect((await newer).status).toBe(204);
    await waitFor(() => closed.length === 1);
    expect((await lp.poll()).status).toBe(204);
    expect((await lp.post(`{"type":6}${RS}`)).status).toBe(404);
  });

  it("ends a long-polling connection whose client stopped polling, and an SSE one whose client went", async () => {
    const closed: string[] = [];
    const server = await start({
      longPolling: { disconnectTimeoutMs: 200 },
      onClose: (connection) => closed.push(connection.userId),
    });
    const lp = await longPoll(server.url, "ann");
    expect((await lp.post(`{"protocol":"json","version":1}${RS}`)).status).toBe(200);
    await waitFor(() => closed.includes("ann"));
    const { connection } = await connect(server.url, "bob", HttpTransportType.ServerSentEvents);
    // Stopping the EventSource is all an SSE client does.
    await connection.stop();
    await waitFor(() => closed.includes("bob"));
  });

  it("stops reading a client's POST while its messages wait, so a flood does not grow the server's memory", async () => {
    let release: () => void = () => {};
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    let handled = 0;
    const server = await start({
      methods: {
        Slow: async (_c, _padding) => {
          await gate;
          handled++;
        },
      },
    });
    const lp = await longPoll(server.url, "ann");
    expect((await lp.post(`{"protocol":"json","version":1}${RS}`)).status).toBe(200);
    // 40 MB of invocations, each near the 32 KiB limit: far more than the kernel's buffers hold.
    const message = `{"type":1,"target":"Slow","arguments":["${"x".repeat(30_000)}"]}${RS}`;
    const chunks = Array.from({ length: 1_300 }, () => message);
    let answered = false;
    const flood = fetch(lp.at, {
      method: "POST",
      headers: lp.auth,
      body: new ReadableStream({
        pull(controller) {
          const chunk = chunks.shift();
          if (chunk === undefined) controller.close();
          else controller.enqueue(new TextEncoder().encode(chunk));
        },
      }),
      duplex: "half",
    } as RequestInit).then((response) => {
      answered = true;
      return response.status;
    });
    await new Promise((resolve) => setTimeout(resolve, 300));
    // Handled one at a time behind a gate: the server stopped reading, so the client could not
    // write most of them (without the pause they are all read into memory in a few ms).
    expect(answered).toBe(false);
    expect(chunks.length).toBeGreaterThan(1_000);
    release();
    expect(await flood).toBe(200);
    expect(handled).toBe(1_300);
  });
});

describe("bindSignalR: the protocol by hand", () => {
  const { start } = useHubs();

  it("answers a handshake it cannot take with ASP.NET Core's texts, and closes", async () => {
    const clientErrors: string[] = [];
    const server = await start({
      handshakeTimeoutMs: 300,
      maxMessageBytes: 100,
      onClientError: (_connection, error) => clientErrors.push(error.message),
    });
    const answers: Array<[string | string[], string]> = [
      [`{"protocol":"blob","version":1}${RS}`, "The protocol 'blob' is not supported."],
      [
        `{"protocol":"json","version":7}${RS}`,
        "The server does not support version 7 of the 'json' protocol.",
      ],
      [`[1,2]${RS}`, "An unexpected error occurred during connection handshake."],
      [['{"protocol":"json"', "x".repeat(90)], "Handshake was canceled."], // past the limit
      ['{"protocol":"json",', "Handshake was canceled."], // never finished: the timeout
    ];
    for (const [handshake, error] of answers) {
      const client = await raw(server.url, "erin", handshake);
      expect(await client.closed).toBe(1000);
      expect(client.records).toEqual([{ error }]);
    }
    // The log says why: the timeout in its own words.
    expect(clientErrors).toEqual([
      ...answers.slice(0, -1).map(([, e]) => e),
      "handshake timed out",
    ]);
    expect(server.errors).toEqual([]);
  });

  it("waits for a handshake sent over several frames, and reads what follows it", async () => {
    const seen: unknown[] = [];
    const server = await start({ methods: { Note: (_c, value) => void seen.push(value) } });
    const client = await raw(server.url, "olga", '{"protocol":');
    client.socket.send('"json","vers');
    client.socket.send(
      `ion":1}${RS}${JSON.stringify({ type: 1, target: "Note", arguments: [1] })}${RS}`,
    );
    client.socket.send(`${JSON.stringify({ type: 1, target: "Note", arguments: [2] })}${RS}`);
    await expect.poll(() => seen).toEqual([1, 2]);
    expect(client.records.slice(0, 2)).toEqual([
      {},
      { type: 1, target: "welcome", arguments: [expect.objectContaining({ groups: [] })] },
    ]);
  });

  it("closes a connection whose message passes maxMessageBytes, whole or in pieces", async () => {
    const server = await start({ maxMessageBytes: 100, methods: { Ok: () => "ok" } });
    const tooLarge = JSON.stringify({ type: 1, target: "Ok", arguments: ["x".repeat(100)] });
    const whole = await raw(server.url, "kim");
    const pieces = await raw(server.url, "kim");
    await expect.poll(() => whole.records.length + pieces.records.length).toBe(4);
    // A frame past the limit is refused by ws before it is buffered: 1009, message too big.
    whole.socket.send(`${tooLarge}${RS}`);
    expect(await whole.closed).toBe(1009);
    // Frames each under the limit, one message growing past it: the protocol's close message.
    pieces.socket.send(tooLarge.slice(0, 60));
    pieces.socket.send(tooLarge.slice(60));
    expect(await pieces.closed).toBe(1000);
    expect(pieces.records.at(-1)).toEqual({
      type: 7,
      error: "Connection closed with an error.",
      allowReconnect: true,
    });
    expect(server.errors).toEqual([]);
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
      error: "Connection closed with an error.",
      allowReconnect: true,
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

  it("ignores a completion that answers nothing, and keeps the connection", async () => {
    const server = await start();
    const { socket, records } = await raw(server.url, "frank");
    await waitFor(() => records.some((r) => r.target === "welcome"));
    for (const made of [
      { type: 3, invocationId: "s999", result: 1 },
      { type: 3, invocationId: 42, result: 1 },
      { type: 3, error: "no id" },
    ])
      socket.send(`${JSON.stringify(made)}${RS}`);
    const welcome = records.find((r) => r.target === "welcome") as {
      arguments: [{ connectionId: string }];
    };
    const id = welcome.arguments[0].connectionId;
    // Then a real one: the server's invocation, answered by hand.
    const asked = server.hub.invokeClient(id, "ask", ["q"]);
    await waitFor(() => records.some((r) => r.target === "ask"));
    const invocation = records.find((r) => r.target === "ask") as { invocationId: string };
    expect(invocation).toMatchObject({ type: 1, target: "ask", arguments: ["q"] });
    socket.send(
      `${JSON.stringify({ type: 3, invocationId: invocation.invocationId, result: "a" })}${RS}`,
    );
    expect(await asked).toBe("a");
    expect(socket.readyState).toBe(WebSocket.OPEN);
    socket.close();
  });

  it("takes a stream's next item only while the reader keeps up: a paused client holds the server's memory flat", async () => {
    let produced = 0;
    const item = "x".repeat(32 * 1024);
    const server = await start({
      streams: {
        Big: async function* () {
          for (; produced < 1_000; produced++) yield item;
        },
      },
    });
    const { socket, records } = await raw(server.url, "ida");
    await waitFor(() => records.some((r) => r.target === "welcome"));
    socket.send(
      `${JSON.stringify({ type: 4, invocationId: "big", target: "Big", arguments: [] })}${RS}`,
    );
    await waitFor(() => records.some((r) => r.type === 2));
    // The client stops reading: the kernel's buffers fill, then the server's 64 KiB, then it waits.
    (socket as unknown as { _socket: { pause(): void; resume(): void } })._socket.pause();
    await new Promise((resolve) => setTimeout(resolve, 500));
    const whilePaused = produced;
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(produced, "items taken while the client did not read").toBe(whilePaused);
    expect(produced).toBeLessThan(1_000);
    (socket as unknown as { _socket: { resume(): void } })._socket.resume();
    await waitFor(() => records.some((r) => r.type === 3 && r.invocationId === "big"));
    expect(records.filter((r) => r.type === 2)).toHaveLength(1_000);
    expect(records.find((r) => r.type === 3 && r.invocationId === "big")).toEqual({
      type: 3,
      invocationId: "big",
    });
    socket.close();
  });

  it("refuses a stream id in use and a 17th stream, ends every stream's generator on close, and survives a broken stream", async () => {
    let running = 0;
    const server = await start({
      streams: {
        Forever: async function* () {
          running++;
          try {
            for (;;) {
              yield 1;
              await new Promise((resolve) => setTimeout(resolve, 20));
            }
          } finally {
            running--;
          }
        },
        Broken: () => ({
          [Symbol.asyncIterator]() {
            throw new Error("no iterator");
          },
        }),
      },
    });
    const { socket, records } = await raw(server.url, "jo");
    await waitFor(() => records.some((r) => r.target === "welcome"));
    const stream = (invocationId: string, target = "Forever") =>
      socket.send(`${JSON.stringify({ type: 4, invocationId, target, arguments: [] })}${RS}`);
    const completionOf = (id: string) => records.find((r) => r.type === 3 && r.invocationId === id);
    for (let i = 0; i < 16; i++) stream(`f${i}`);
    stream("f0");
    stream("f16");
    await waitFor(() => completionOf("f16") !== undefined && completionOf("f0") !== undefined);
    expect(completionOf("f0")).toEqual({
      type: 3,
      invocationId: "f0",
      error: "Invocation ID 'f0' is already in use.",
    });
    expect(completionOf("f16")?.error).toBe("Too many streams, or a stream id already in use.");
    expect(running).toBe(16);
    // Cancel one: its generator ends and its id may be used again.
    socket.send(`${JSON.stringify({ type: 5, invocationId: "f1" })}${RS}`);
    await waitFor(() => running === 15);
    stream("broken", "Broken");
    socket.send(`${JSON.stringify({ type: 5, invocationId: "f2" })}${RS}`);
    await waitFor(() => completionOf("broken") !== undefined);
    expect(completionOf("broken")?.error).toBe(
      "An error occurred on the server while streaming results.",
    );
    // The connection goes: every generator's finally runs.
    socket.close();
    await waitFor(() => running === 0);
    expect(server.errors.map(String)).toEqual(["Error: no iterator"]);
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

describe("bindSignalR: the HTTP edge, wired as the README shows", () => {
  let server: Awaited<ReturnType<typeof serve>>;
  let port: number;
  const rejections: unknown[] = [];
  const onRejection = (reason: unknown) => rejections.push(reason);
  beforeEach(async () => {
    process.on("unhandledRejection", onRejection);
    server = await serve({ methods: { Echo: (_c, text) => text } });
    port = Number(new URL(server.url).port);
  });
  afterEach(async () => {
    process.off("unhandledRejection", onRejection);
    await server.close();
  });
  const ask = (line: string, headers: Record<string, string> = {}, body = "") =>
    rawRequest(port, httpRequest(line, headers, body));

  it("answers every request itself, malformed or for a transport it does not offer", async () => {
    const answers: Array<[string, Record<string, string>, string, string]> = [
      ["GET //[ HTTP/1.1", {}, "HTTP/1.1 400 Bad Request", "Bad Request"],
      ["POST //[/hub/negotiate HTTP/1.1", {}, "HTTP/1.1 400 Bad Request", "Bad Request"],
      ["GET /elsewhere HTTP/1.1", {}, "HTTP/1.1 404 Not Found", "Not Found"],
      ["GET /hub/negotiate HTTP/1.1", {}, "HTTP/1.1 405 Method Not Allowed", ""],
      ["POST /hub/negotiate HTTP/1.1", {}, "HTTP/1.1 401 Unauthorized", ""],
      ["POST /HUB/Negotiate?negotiateVersion=x HTTP/1.1", {}, "HTTP/1.1 400 Bad Request", ""],
      ["GET /hub HTTP/1.1", {}, "HTTP/1.1 400 Bad Request", "Connection ID required"],
      [
        "GET /hub?id=abc HTTP/1.1",
        { accept: "text/event-stream" },
        "HTTP/1.1 401 Unauthorized",
        "",
      ],
      ["POST /hub?id=abc HTTP/1.1", {}, "HTTP/1.1 401 Unauthorized", ""],
      [
        "GET /hub?id=abc&access_token=ann HTTP/1.1",
        { accept: "text/event-stream" },
        "HTTP/1.1 404 Not Found",
        "No Connection with that ID",
      ],
      [
        "POST /hub?id=abc HTTP/1.1",
        { authorization: "Bearer ann" },
        "HTTP/1.1 404 Not Found",
        "No Connection with that ID",
      ],
      [
        "DELETE /hub?id=abc HTTP/1.1",
        { authorization: "Bearer ann" },
        "HTTP/1.1 404 Not Found",
        "No Connection with that ID",
      ],
      ["PUT /hub?id=abc HTTP/1.1", {}, "HTTP/1.1 405 Method Not Allowed", ""],
      [
        "POST /hub/negotiate HTTP/1.1",
        { "content-length": "1000000" },
        "HTTP/1.1 413 Payload Too Large",
        "Payload Too Large",
      ],
    ];
    for (const [line, headers, status, body] of answers) {
      const answer = await ask(line, headers);
      expect({ line, status: answer.status, closed: answer.closed }).toEqual({
        line,
        status,
        closed: true,
      });
      if (body !== "") expect(answer.body).toContain(body);
      else if (!status.includes(" 400 ")) expect(answer.body).toBe("");
    }
    expect(rejections).toEqual([]);
    expect(server.errors).toEqual([]);
  });

  it("refuses a malformed upgrade with 400, and keeps serving", async () => {
    for (const line of ["GET //[/hub HTTP/1.1", "GET //[ HTTP/1.1", "GET http://[/hub HTTP/1.1"]) {
      const answer = await ask(line, { ...WEBSOCKET_HEADERS, authorization: "Bearer ann" });
      expect(answer.status, line).toBe("HTTP/1.1 400 Bad Request");
    }
    const unknownId = await ask("GET /hub?id=made-up&access_token=ann HTTP/1.1", WEBSOCKET_HEADERS);
    expect(unknownId.status).toBe("HTTP/1.1 404 No Connection with that ID");
    expect(rejections).toEqual([]);
    expect(server.errors).toEqual([]);
    const { connection } = await official(server.url, "ann");
    expect(await connection.invoke("Echo", "still serving")).toBe("still serving");
    await connection.stop();
  });

  it("sets the WebSocketServer's maxPayload from maxMessageBytes: nothing larger is buffered", () => {
    const wss = new WebSocketServer({ noServer: true });
    expect(wss.options.maxPayload).toBe(100 * 1024 * 1024); // ws's default
    bindSignalR(wss, {
      store: new InMemoryMembershipStore(),
      path: "/x",
      userIdOf: tokenOf,
      methods: {},
    });
    expect(wss.options.maxPayload).toBe(32 * 1024 + 1);
  });
});

describe("bindSignalR: pending negotiations are bounded", () => {
  it("answers 429 past the user's pending negotiations, 503 past all, and frees a place when used", async () => {
    const server = await serve({ maxPendingNegotiationsPerUser: 2, maxPendingNegotiations: 3 });
    try {
      const negotiate = (user: string) =>
        fetch(`${server.url}/negotiate?negotiateVersion=1`, {
          method: "POST",
          headers: { authorization: `Bearer ${user}` },
        });
      const first = (await (await negotiate("pat")).json()) as { connectionToken: string };
      expect((await negotiate("pat")).status).toBe(200);
      const refused = await negotiate("pat");
      expect(refused.status).toBe(429);
      expect(refused.headers.get("retry-after")).toBe("30");
      expect((await negotiate("quinn")).status).toBe(200);
      expect((await negotiate("rosa")).status).toBe(503); // three pending in all
      // A socket that uses its negotiation gives the place back.
      const socket = new WebSocket(
        `${server.url.replace("http", "ws")}?id=${first.connectionToken}&access_token=pat`,
      );
      await once(socket, "open");
      expect((await negotiate("rosa")).status).toBe(200);
      socket.terminate();
    } finally {
      await server.close();
    }
  });
});
