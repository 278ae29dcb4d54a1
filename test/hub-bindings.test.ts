import { once } from "node:events";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { Server } from "socket.io";
import { io as ioClient } from "socket.io-client";
import { describe, expect, it } from "vitest";
import { WebSocket, WebSocketServer } from "ws";
import { bindSocketIo } from "../adapters/hubs/socket-io.js";
import { bindWs } from "../adapters/hubs/ws.js";
import { InMemoryMembershipStore, MembershipSync } from "../adapters/index.js";
import { type HarnessConnection, testHubBinding } from "../adapters/testing/index.js";
import { httpRequest, rawRequest, WEBSOCKET_HEADERS } from "./support/raw-http.js";
import { RecordingHub } from "./support/recording-hub.js";

type Message = { group: string; text: string };

async function listening(server: ReturnType<typeof createServer>) {
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return `127.0.0.1:${(server.address() as AddressInfo).port}`;
}

/** MembershipSync on a hub that is a map of connection ids to groups: the smallest binding. */
testHubBinding("MembershipSync + a recording hub", {
  async create(store) {
    const hub = new RecordingHub();
    const sync = new MembershipSync({ store, hub, onError: () => {} });
    const inboxes = new Map<string, Message[]>();
    let ids = 0;
    return {
      async connect(userId, onOpening) {
        const id = `c${ids++}`;
        const received: Message[] = [];
        const close = async () => {
          inboxes.delete(id);
          sync.disconnect(id);
        };
        onOpening?.(close);
        await sync.connect(id, userId);
        inboxes.set(id, received);
        return { received, close };
      },
      async broadcast(group, text) {
        for (const [id, inbox] of inboxes)
          if (hub.of(id).includes(group)) inbox.push({ group, text });
      },
      grant: (userId, group, options) => sync.grant(userId, group, options),
      revoke: (userId, group) => sync.revoke(userId, group),
      close: () => sync.close(),
    };
  },
});

testHubBinding("bindWs", {
  async create(store) {
    const http = createServer();
    const wss = new WebSocketServer({ noServer: true });
    const hub = bindWs(wss, {
      store,
      userIdOf: (request) =>
        new URL(request.url ?? "/", "http://x").searchParams.get("user") ?? undefined,
      onConnection: ({ id }) => hub.send(id, JSON.stringify({ type: "welcome" })),
      onError: () => {},
    });
    http.on("upgrade", (request, socket, head) => void hub.handleUpgrade(request, socket, head));
    const address = await listening(http);
    const clients: WebSocket[] = [];
    return {
      async connect(userId, onOpening) {
        const client = new WebSocket(`ws://${address}/?user=${encodeURIComponent(userId)}`);
        clients.push(client);
        const received: Message[] = [];
        const close = async () => {
          client.terminate();
        };
        onOpening?.(close);
        await new Promise<void>((resolve, reject) => {
          client.on("message", (data) => {
            const message = JSON.parse(data.toString()) as { type?: string } & Message;
            if (message.type === "welcome") resolve();
            else received.push({ group: message.group, text: message.text });
          });
          client.on("close", () => reject(new Error("closed before welcome")));
          client.on("error", reject);
        });
        return { received, close } satisfies HarnessConnection;
      },
      broadcast: (group, text) => hub.broadcast(group, JSON.stringify({ group, text })),
      grant: (userId, group, options) => hub.grant(userId, group, options),
      revoke: (userId, group) => hub.revoke(userId, group),
      async close() {
        for (const client of clients) client.terminate();
        await hub.close();
        http.closeAllConnections();
        http.close();
      },
    };
  },
});

testHubBinding("bindSocketIo", {
  async create(store) {
    const http = createServer();
    const io = new Server(http, { transports: ["websocket"] });
    const sync = bindSocketIo(io, {
      store,
      userIdOf: (socket) => (socket.handshake.auth as { user: string }).user,
      onError: () => {},
    });
    const address = await listening(http);
    const clients: Array<ReturnType<typeof ioClient>> = [];
    return {
      async connect(userId, onOpening) {
        const client = ioClient(`http://${address}`, {
          transports: ["websocket"],
          reconnection: false,
          forceNew: true,
          auth: { user: userId },
        });
        clients.push(client);
        const received: Message[] = [];
        client.on("message", (message: Message) => received.push(message));
        let giveUp: (error: Error) => void = () => {};
        const close = async () => {
          client.disconnect(); // before it connected, socket.io-client says nothing more
          giveUp(new Error("closed by the client"));
        };
        onOpening?.(close);
        await new Promise<void>((resolve, reject) => {
          giveUp = reject;
          client.once("connect", resolve);
          client.once("connect_error", reject);
          client.once("disconnect", () => reject(new Error("disconnected")));
        });
        return { received, close };
      },
      async broadcast(group, text) {
        io.to(group).emit("message", { group, text });
      },
      grant: (userId, group, options) => sync.grant(userId, group, options),
      revoke: (userId, group) => sync.revoke(userId, group),
      async close() {
        for (const client of clients) client.disconnect();
        await sync.close();
        await io.close();
      },
    };
  },
});

describe("bindWs on a WebSocketServer that listens by itself", () => {
  it("authenticates after the upgrade: a refused client is closed with 1008, an accepted one rehydrated", async () => {
    const store = new InMemoryMembershipStore();
    await store.addToGroup("alice", "room");
    const wss = new WebSocketServer({ port: 0, host: "127.0.0.1" });
    await once(wss, "listening");
    const errors: unknown[] = [];
    const hub = bindWs(wss, {
      store,
      userIdOf: (request) => {
        const user = new URL(request.url ?? "/", "http://x").searchParams.get("user");
        if (user === "boom") throw new Error("the token service is down");
        return user ?? undefined;
      },
      onConnection: ({ id }, groups) => hub.send(id, JSON.stringify({ groups })),
      onError: (error) => errors.push(error),
    });
    try {
      const url = `ws://127.0.0.1:${(wss.address() as AddressInfo).port}`;
      const refused = new WebSocket(`${url}/`);
      const [code] = (await once(refused, "close")) as [number];
      expect(code).toBe(1008);
      expect(errors).toEqual([]); // a refusal is no error
      // An authentication that fails (not one that says no) is closed too, and reported.
      const failed = new WebSocket(`${url}/?user=boom`);
      expect(((await once(failed, "close")) as [number])[0]).toBe(1008);
      expect(errors).toEqual([new Error("the token service is down")]);
      const alice = new WebSocket(`${url}/?user=alice`);
      const [data] = (await once(alice, "message")) as [Buffer];
      expect(JSON.parse(data.toString())).toEqual({ groups: ["room"] });
      alice.close();
    } finally {
      await hub.close();
      wss.close();
    }
  });
});

describe("bindWs fair reading", () => {
  it("stops reading from a connection whose messages pile up, and resumes once they are handled, in order", async () => {
    const wss = new WebSocketServer({ port: 0, host: "127.0.0.1" });
    await once(wss, "listening");
    let release: () => void = () => {};
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    const handled: string[] = [];
    let serverSide: WebSocket | undefined;
    const hub = bindWs(wss, {
      store: new InMemoryMembershipStore(),
      userIdOf: () => "alice",
      maxQueuedMessages: 4,
      onConnection: ({ id, socket }) => {
        serverSide = socket;
        hub.send(id, "welcome");
      },
      onMessage: async (_connection, data) => {
        await gate;
        handled.push(String(data));
      },
    });
    try {
      const client = new WebSocket(`ws://127.0.0.1:${(wss.address() as AddressInfo).port}`);
      await once(client, "message");
      for (let i = 0; i < 100; i++) client.send(`m${i}`);
      await expect.poll(() => serverSide?.isPaused).toBe(true);
      expect(handled).toEqual([]);
      release();
      await expect.poll(() => handled.length).toBe(100);
      expect(handled).toEqual(Array.from({ length: 100 }, (_, i) => `m${i}`));
      expect(serverSide?.isPaused).toBe(false);
      client.close();
    } finally {
      await hub.close();
      wss.close();
    }
  });
});

describe("bindWs at the edge, wired as the README shows", () => {
  it("answers a malformed upgrade with 400, and a frame over maxMessageBytes closes only its connection", async () => {
    const http = createServer();
    const wss = new WebSocketServer({ noServer: true });
    const errors: unknown[] = [];
    const clientErrors: string[] = [];
    const hub = bindWs(wss, {
      store: new InMemoryMembershipStore(),
      maxMessageBytes: 1000,
      userIdOf: (request) => request.headers.authorization,
      onConnection: ({ id }) => hub.send(id, "welcome"),
      onMessage: ({ id }, data) => void hub.send(id, `echo ${String(data)}`),
      onClientError: ({ userId }, error) => clientErrors.push(`${userId}: ${error.message}`),
      onError: (error) => errors.push(error),
    });
    http.on("upgrade", (request, socket, head) => void hub.handleUpgrade(request, socket, head));
    const address = await listening(http);
    try {
      expect(wss.options.maxPayload).toBe(1000);
      // Without maxMessageBytes: 1 MiB, not ws's 100 MiB.
      const plain = new WebSocketServer({ noServer: true });
      bindWs(plain, { store: new InMemoryMembershipStore(), userIdOf: () => "x", heartbeatMs: 0 });
      expect(plain.options.maxPayload).toBe(1024 * 1024);
      for (const line of ["GET //[/hub HTTP/1.1", "GET //[ HTTP/1.1", "GET http://[/ HTTP/1.1"]) {
        const answer = await rawRequest(
          Number(address.split(":")[1]),
          httpRequest(line, { ...WEBSOCKET_HEADERS, authorization: "ann" }),
        );
        expect(answer.status, line).toBe("HTTP/1.1 400 Bad Request");
      }
      const open = async () => {
        const client = new WebSocket(`ws://${address}/`, { headers: { authorization: "ann" } });
        await once(client, "message"); // the welcome
        return client;
      };
      const [big, small] = await Promise.all([open(), open()]);
      big.send("x".repeat(1001));
      expect(((await once(big, "close")) as [number])[0]).toBe(1009);
      small.send("x".repeat(1000));
      expect(String(((await once(small, "message")) as [Buffer])[0])).toBe(
        `echo ${"x".repeat(1000)}`,
      );
      small.close();
      expect(clientErrors).toEqual(["ann: Max payload size exceeded"]);
      expect(errors).toEqual([]);
    } finally {
      await hub.close();
      http.closeAllConnections();
      http.close();
    }
  });
});

describe("bindWs heartbeat", () => {
  it("pings every heartbeatMs and terminates a client that stopped answering, not one that answers", async () => {
    const http = createServer();
    const wss = new WebSocketServer({ noServer: true });
    const closed: string[] = [];
    const hub = bindWs(wss, {
      store: new InMemoryMembershipStore(),
      heartbeatMs: 100,
      userIdOf: (request) => request.headers.authorization,
      onConnection: ({ id }) => hub.send(id, "welcome"),
      onClose: ({ userId }) => closed.push(userId),
    });
    http.on("upgrade", (request, socket, head) => void hub.handleUpgrade(request, socket, head));
    const address = await listening(http);
    try {
      const open = async (user: string) => {
        const client = new WebSocket(`ws://${address}/`, { headers: { authorization: user } });
        await once(client, "message");
        return client;
      };
      const [silent, alive] = await Promise.all([open("silent"), open("alive")]);
      // A client whose machine stopped: it reads nothing, so it answers no ping.
      (silent as unknown as { _socket: { pause(): void } })._socket.pause();
      await expect.poll(() => closed, { timeout: 2_000 }).toEqual(["silent"]);
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(alive.readyState).toBe(WebSocket.OPEN);
      alive.close();
    } finally {
      await hub.close();
      http.closeAllConnections();
      http.close();
    }
  });
});
