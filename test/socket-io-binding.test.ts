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

  it("refuses connection state recovery, which restores rooms without the store", async () => {
    const { io } = await server({ connectionStateRecovery: {} });
    const store = new InMemoryMembershipStore();
    expect(() => bindSocketIo(io, { store, userIdOf: userOf })).toThrow(MembershipError);
    expect(() => bindSocketIo(io.of("/x"), { store, userIdOf: userOf })).toThrow(
      /connectionStateRecovery/,
    );
  });
});
