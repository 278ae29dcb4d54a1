import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { Server, type Socket } from "socket.io";
import { type Socket as ClientSocket, io as ioClient } from "socket.io-client";
import { afterEach, describe, expect, it } from "vitest";
import { bindSocketIo } from "../adapters/hubs/socket-io.js";
import { InMemoryMembershipStore, type Membership, MembershipError } from "../adapters/index.js";

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function server(options: ConstructorParameters<typeof Server>[1] = {}) {
  const http = createServer();
  const io = new Server(http, { transports: ["websocket"], ...options });
  await new Promise<void>((resolve) => http.listen(0, "127.0.0.1", resolve));
  cleanups.push(() => io.close());
  return { io, url: `http://127.0.0.1:${(http.address() as AddressInfo).port}` };
}

function client(url: string, user: string): ClientSocket {
  const socket = ioClient(url, {
    transports: ["websocket"],
    reconnection: false,
    forceNew: true,
    auth: { user },
  });
  cleanups.push(() => socket.disconnect());
  return socket;
}

const connected = (socket: ClientSocket) =>
  new Promise<void>((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("connect_error", reject);
  });

const userOf = (socket: Socket) => (socket.handshake.auth as { user: string }).user;
const until = async (condition: () => boolean) => {
  for (let i = 0; i < 200 && !condition(); i++) await new Promise((r) => setTimeout(r, 10));
  expect(condition()).toBe(true);
};

describe("bindSocketIo", () => {
  it("rooms follow the store on a namespace, with a custom room name", async () => {
    const { io, url } = await server();
    const store = new InMemoryMembershipStore();
    await store.addToGroup("ann", "red");
    const chat = io.of("/chat");
    const sync = bindSocketIo(chat, { store, userIdOf: userOf, room: (g) => `group:${g}` });
    const rooms = new Map<string, Set<string>>();
    chat.on("connection", (socket) => rooms.set(socket.id, socket.rooms));
    const ann = client(`${url}/chat`, "ann");
    await connected(ann);
    const id = ann.id as string;
    expect(rooms.get(id)).toEqual(new Set([id, "group:red"]));

    await sync.grant("ann", "blue");
    expect(rooms.get(id)?.has("group:blue")).toBe(true);
    expect(await sync.revoke("ann", "red")).toBe(true);
    expect(rooms.get(id)?.has("group:red")).toBe(false);
    expect(sync.isInGroup(id, "blue")).toBe(true);
  });

  it("refuses a connection whose userIdOf throws or returns an invalid id, and keeps nothing", async () => {
    const { io, url } = await server();
    const store = new InMemoryMembershipStore();
    const sync = bindSocketIo(io, {
      store,
      userIdOf: (socket) => {
        if (userOf(socket) === "nobody") throw new Error("who are you?");
        return userOf(socket);
      },
    });
    await expect(connected(client(url, "nobody"))).rejects.toThrow("who are you?");
    await expect(connected(client(url, ""))).rejects.toThrow(/userId/);
    expect(sync.connectionsOf("nobody")).toEqual([]);
    expect(sync.connectionsOf("")).toEqual([]);
  });

  it("refuses a connection while the store is down, and keeps nothing", async () => {
    const { io, url } = await server();
    const store = new (class extends InMemoryMembershipStore {
      override async groupsOf(): Promise<Membership[]> {
        throw new MembershipError("STORE_UNAVAILABLE", "storage is down");
      }
    })();
    const sync = bindSocketIo(io, { store, userIdOf: userOf, onError: () => {} });
    await expect(connected(client(url, "dee"))).rejects.toThrow("storage is down");
    expect(sync.connectionsOf("dee")).toEqual([]);
  });

  it("forgets a socket whose client leaves while its groups are being read", async () => {
    const { io, url } = await server();
    let release = () => {};
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    const store = new (class extends InMemoryMembershipStore {
      override async groupsOf(userId: string): Promise<Membership[]> {
        await gate;
        return super.groupsOf(userId);
      }
    })();
    const sync = bindSocketIo(io, { store, userIdOf: userOf });
    let connections = 0;
    io.on("connection", () => connections++);
    const bea = client(url, "bea");
    await until(() => sync.connectionsOf("bea").length === 1);
    bea.disconnect();
    await until(() => sync.connectionsOf("bea").length === 0);
    release();
    await new Promise((r) => setTimeout(r, 50));
    expect(connections).toBe(0);
    expect(sync.connectionsOf("bea")).toEqual([]);
  });

  it("forgets a socket that a later middleware refuses, once its transport closes", async () => {
    const { io, url } = await server();
    const sync = bindSocketIo(io, { store: new InMemoryMembershipStore(), userIdOf: userOf });
    io.use((_socket, next) => next(new Error("banned")));
    const cy = client(url, "cy");
    await expect(connected(cy)).rejects.toThrow("banned");
    cy.disconnect();
    await until(() => sync.connectionsOf("cy").length === 0);
  });

  it("a recovered socket refused by a middleware gets nothing it missed, not even on the wire", async () => {
    const { io, url } = await server({ connectionStateRecovery: { skipMiddlewares: false } });
    const banned = new Set<string>();
    io.use((socket, next) => next(banned.has(userOf(socket)) ? new Error("banned") : undefined));
    const store = new InMemoryMembershipStore();
    await store.addToGroup("ann", "g");
    bindSocketIo(io, { store, userIdOf: userOf });
    const ann = ioClient(url, { transports: ["websocket"], forceNew: true, auth: { user: "ann" } });
    cleanups.push(() => ann.disconnect());
    const wire: unknown[] = [];
    ann.io.on("packet", (packet: { type: number; data?: unknown }) => {
      if (packet.type === 2) wire.push(packet.data);
    });
    await connected(ann);
    io.to("g").emit("m", "seen");
    await until(() => wire.length === 1);
    const gone = new Promise((resolve) => ann.once("disconnect", resolve));
    ann.io.engine.close();
    await gone;
    io.to("g").emit("m", "missed while away");
    banned.add("ann");
    const refused = new Promise((resolve) => ann.once("connect_error", resolve));
    ann.connect();
    expect(String(await refused)).toMatch(/banned/);
    await new Promise((r) => setTimeout(r, 100));
    expect(wire).toEqual([["m", "seen", expect.any(String)]]);
  });

  it("refuses connection state recovery that skips middlewares: recovered sockets would bypass the store", async () => {
    // Socket.IO's default is to skip them.
    const { io } = await server({ connectionStateRecovery: {} });
    const store = new InMemoryMembershipStore();
    expect(() => bindSocketIo(io, { store, userIdOf: userOf })).toThrow(MembershipError);
    expect(() => bindSocketIo(io.of("/x"), { store, userIdOf: userOf })).toThrow(/skipMiddlewares/);
  });

  it("connection state recovery gives back only what the store still grants (socket.io#5491)", async () => {
    const { io, url } = await server({ connectionStateRecovery: { skipMiddlewares: false } });
    const store = new InMemoryMembershipStore();
    for (const group of ["again", "kept", "revoked"]) await store.addToGroup("ann", group);
    const reports: unknown[] = [];
    const sync = bindSocketIo(io, {
      store,
      userIdOf: userOf,
      onRecovered: (_socket, report) => reports.push(report),
    });
    const ann = ioClient(url, {
      transports: ["websocket"],
      forceNew: true,
      auth: { user: "ann" },
      reconnectionDelay: 50,
      reconnectionDelayMax: 50,
    });
    cleanups.push(() => ann.disconnect());
    const got: string[] = [];
    ann.on("m", (text: string) => got.push(text));
    await connected(ann);
    io.to("kept").emit("m", "kept 1");
    io.to("revoked").emit("m", "revoked 1");
    await until(() => got.length === 2);

    // The network drops; while the socket is away, one group is revoked, one revoked and granted
    // again, and messages go to all three.
    const back = new Promise((resolve) => ann.io.once("reconnect", resolve));
    ann.io.engine.close();
    await until(() => sync.connectionsOf("ann").length === 0);
    io.to("kept").emit("m", "kept 2");
    io.to("again").emit("m", "again 1");
    await sync.revoke("ann", "revoked");
    await sync.revoke("ann", "again");
    io.to("revoked").emit("m", "revoked 2");
    io.to("again").emit("m", "again 2");
    await sync.grant("ann", "again");
    io.to("again").emit("m", "again 3");
    await back;
    await until(() => got.includes("kept 2"));
    expect(ann.recovered).toBe(true);
    expect(reports).toMatchObject([{ recovered: ["kept"], lost: ["again", "revoked"] }]);
    io.to("revoked").emit("m", "revoked 3");
    io.to("again").emit("m", "again 4");
    io.to("kept").emit("m", "kept 3");
    await until(() => got.includes("kept 3"));
    // Nothing of the revoked group, nothing of the other from while its membership changed.
    expect(got).toEqual(["kept 1", "revoked 1", "kept 2", "again 4", "kept 3"]);
    expect(sync.groupsOfConnection(ann.id as string)).toEqual(["again", "kept"]);

    // Another user presenting ann's session is refused (and not kept in her rooms).
    const session = ann as unknown as { _pid: string; _lastOffset: string };
    const { _pid: pid, _lastOffset: offset } = session;
    ann.io.engine.close();
    await until(() => sync.connectionsOf("ann").length === 0);
    const bob = client(url, "bob");
    bob.auth = { user: "bob", pid, offset };
    await expect(connected(bob)).rejects.toThrow(/another user/);
    expect(sync.connectionsOf("bob")).toEqual([]);
  });
});
