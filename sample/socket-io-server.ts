import { EventEmitter } from "node:events";
import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import { Server, type Socket } from "socket.io";
import { bindSocketIo } from "../adapters/hubs/socket-io.js";
import { refuseUpgrade, requestTarget } from "../adapters/hubs/ws.js";
import { isValidName, MembershipError, type PresenceEvent } from "../adapters/index.js";
import { authenticate, configurePassport, type Principal } from "./auth.js";
import { ChatBus, onlineOf } from "./chat-bus.js";
import type { SampleConfig } from "./config.js";
import {
  commonRoute,
  httpServer,
  listen,
  listenOps,
  Origins,
  openStore,
  type RouteContext,
  sendJson,
} from "./http.js";
import { floodGuardOf, welcomeGroups } from "./limits.js";
import { Observability } from "./observability.js";
import type { HubServer } from "./server.js";

const MAX_TIMER = 2 ** 31 - 1;
/** The client events this hub handles; any other spends the budget all the same. */
const HANDLED = new Set(["send", "join", "leave", "online"]);

/** What a client may send; every event takes an acknowledgement callback. */
interface ClientEvents {
  send(message: { group: string; text: string }, ack: (reply: Reply) => void): void;
  join(message: { group: string }, ack: (reply: Reply) => void): void;
  leave(message: { group: string }, ack: (reply: Reply) => void): void;
  online(message: { group: string; after?: string }, ack: (reply: Reply) => void): void;
}
interface ServerEvents {
  welcome(message: { userId: string; groups: string[]; groupCount: number }): void;
  joined(message: { group: string }): void;
  removed(message: { group: string; reason: string }): void;
  message(message: { group: string; from: string; text: string; at: string }): void;
  recovered(message: { recovered: readonly string[]; lost: readonly string[] }): void;
  presence(message: PresenceEvent): void;
}
type Reply =
  | { ok: true }
  | { group: string; users: string[]; connections: number; next?: string }
  | { error: string; group?: string; retryAfterMs?: number };
type SocketData = { principal: Principal };
type HubSocket = Socket<ClientEvents, ServerEvents, Record<string, never>, SocketData>;

/** The `group` of a client's event payload, if it is a valid name. */
function groupOf(payload: unknown): string | undefined {
  const group = (payload as { group?: unknown } | null)?.group;
  return isValidName(group) ? group : undefined;
}

/**
 * The sample hub on Socket.IO (websocket transport only): the same users, groups, JWTs and store
 * as the `ws` sample, as Socket.IO events. With `config.redisUrl`, servers share messages with
 * every other server of the sample, whatever its hub (`ChatBus`), and membership changes
 * through the store's Redis feed.
 */
export async function startSocketIoServer(config: SampleConfig): Promise<HubServer> {
  const obs: Observability = new Observability(() => ({
    "socket.io": {
      connections: io.of("/").sockets.size,
      // Every socket has a room of its own; the rest are groups.
      groups: io.of("/").adapter.rooms.size - io.of("/").sockets.size,
    },
  }));
  const { log } = obs;
  const { store, requests, failed } = await openStore(config, log);
  const fail = async (error: unknown): Promise<never> => {
    await store.close();
    throw error;
  };
  const auth = configurePassport(config.jwt);
  const origins = new Origins(config);
  let joins = 0;
  let leaves = 0;

  const routes: RouteContext = {
    config,
    store,
    get presence() {
      return chat.presence;
    },
    observability: obs,
    origins,
    stats: () => ({
      connections: io.of("/").sockets.size,
      joins,
      leaves,
      rateLimited,
      storageRequests: requests,
    }),
  };
  const http = httpServer(async (req, res) => {
    if (!(await commonRoute(req, res, routes))) sendJson(res, 404, { error: "not_found" });
  }, log);
  http.on("upgrade", (req: IncomingMessage, socket: Duplex) => {
    if (requestTarget(req)?.pathname === "/socket.io/") return; // engine.io's
    socket.on("error", () => socket.destroy());
    if (requestTarget(req) === undefined) refuseUpgrade(socket, 400, "Bad Request");
    else refuseUpgrade(socket, 404, "Not Found");
  });
  const io = new Server<ClientEvents, ServerEvents, Record<string, never>, SocketData>(http, {
    // A browser's page from another origin may not open a socket (see Origins).
    allowRequest: (request, callback) => {
      const allowed = origins.allows(request);
      if (!allowed) obs.refused("socket.io", "origin");
      callback(allowed ? null : "origin not allowed", allowed);
    },
    // Upgrades to other paths are refused below, at once and with the socket released (engine.io
    // would wait 1 s and then only end it, which a client still sending never lets close).
    destroyUpgrade: false,
    // The token is checked when the socket asks for the namespace (so a client is told
    // `unauthorized`); one that opens and never asks is closed after 5 s, not Socket.IO's 45.
    connectTimeout: 5_000,
    transports: ["websocket"],
    maxHttpBufferSize: 64 * 1024,
    serveClient: false,
    // A client back within 2 minutes on this server gets the events it missed: only of the
    // groups the store still grants it, checked by bindSocketIo (which needs the middlewares).
    connectionStateRecovery: { maxDisconnectionDuration: 120_000, skipMiddlewares: false },
  });
  const guard = await floodGuardOf(config, log).catch(fail);
  let rateLimited = 0;
  // Rooms are this server's: a message from elsewhere comes through the chat bus.
  const chat = new ChatBus(config, log, store, (target, message) => {
    const { from, text, at } = message;
    if ("group" in target)
      io.to(target.group).emit("message", { group: target.group, from, text, at });
  });
  await chat.start().catch(fail);
  obs.observePresence(chat.presence);

  // Authentication first: the membership binding below needs to know who the socket is.
  io.use((socket, next) => {
    const admit = async (): Promise<string | undefined> => {
      const principal = await authenticate(auth, socket.request);
      if (principal === undefined || principal.expiresAt <= Date.now()) return "unauthorized";
      if (!(await guard.admitConnection(principal.userId)).ok) return "rate_limited";
      // One of the user's slots (on every server, with Redis), given back when the transport closes.
      const release = await guard.slots.take(principal.userId);
      if (release === undefined) return "too_many_connections";
      if (socket.conn.readyState !== "open") release();
      else socket.conn.once("close", release);
      socket.data.principal = principal;
    };
    admit().then(
      (refusal) => {
        if (refusal !== undefined) obs.refused("socket.io", refusal, socket.data.principal?.userId);
        next(refusal === undefined ? undefined : new Error(refusal));
      },
      (e: unknown) => next(e instanceof Error ? e : new Error(String(e))),
    );
  });
  const sync = bindSocketIo(io, {
    store,
    userIdOf: (socket: HubSocket) => socket.data.principal.userId,
    onJoin: (socket, group, reason) => {
      joins++;
      if (reason === "granted") socket.emit("joined", { group });
    },
    onLeave: (socket, group, reason) => {
      leaves++;
      socket.emit("removed", { group, reason: reason ?? "revoked" });
    },
    onError: (error) =>
      log.error({ event: "hub.error", endpoint: "socket.io", err: error }, "hub binding failed"),
    // Who is online, with Redis over every server of the sample, whatever its hub.
    presence: chat.presence,
    presenceEvent: "presence",
    onRecovered: (socket, { recovered, lost, replayed = 0 }) => {
      socket.emit("recovered", { recovered, lost });
      // A group it lost and is no longer in: it is told, as a connected socket would have been.
      const now = new Set(sync.groupsOfConnection(socket.id));
      for (const group of lost)
        if (!now.has(group)) socket.emit("removed", { group, reason: "revoked" });
      obs.resumed("socket.io", {
        resumed: true,
        groups: [...recovered, ...lost].map((group) => ({ recovered: !lost.includes(group) })),
        replayed,
      });
    },
  });

  io.on("connection", (socket) => {
    const { userId, expiresAt } = socket.data.principal;
    const expiry = setTimeout(
      () => socket.disconnect(true),
      Math.min(expiresAt - Date.now(), MAX_TIMER),
    );
    socket.on("disconnect", () => {
      clearTimeout(expiry);
      obs.closed("socket.io", { id: socket.id, userId });
    });
    const groups = sync.groupsOfConnection(socket.id);
    socket.emit("welcome", { userId, ...welcomeGroups(groups) });
    obs.opened("socket.io", { id: socket.id, userId }, groups.length);

    /** Every packet a client sends spends its budget, whatever it is; a flood is disconnected. */
    const spend = async (bytes: number) => {
      if (!socket.connected) return { ok: false, retryAfterMs: 0, close: true } as const;
      const verdict = await guard.admit(socket.id, userId, bytes);
      if (verdict.ok) return verdict;
      rateLimited++;
      obs.rateLimited("socket.io", { id: socket.id, userId }, verdict.close);
      if (verdict.close) socket.disconnect(true);
      return verdict;
    };
    const sizeOf = (value: unknown) => Buffer.byteLength(JSON.stringify(value ?? null) ?? "");
    // Events this hub has no handler for, and engine.io's own packets (pings, pongs, noops).
    socket.onAny((event: string, ...args: unknown[]) => {
      if (!HANDLED.has(event)) void spend(sizeOf(args));
    });
    socket.conn.on("packet", (packet: { type: string; data?: unknown }) => {
      if (packet.type !== "message") void spend(1 + String(packet.data ?? "").length);
    });
    // And the WebSocket's own control frames, below engine.io (which answers pings itself).
    const raw = (socket.conn as unknown as { transport?: { socket?: unknown } }).transport?.socket;
    if (raw instanceof EventEmitter)
      for (const frame of ["ping", "pong"])
        raw.on(frame, (data: Buffer) => void spend(Math.max(1, data.length)));
    const handle = (payload: unknown, ack: unknown, action: (group: string) => Promise<Reply>) => {
      const reply = typeof ack === "function" ? (ack as (r: Reply) => void) : () => {};
      const admitted = spend(sizeOf(payload)).then((verdict) => {
        if (!verdict.ok) reply({ error: "rate_limited", retryAfterMs: verdict.retryAfterMs });
        return verdict.ok;
      });
      // One event at a time per socket, in order, as the ws hub handles its frames.
      queue = queue
        .then(() => admitted)
        .then((ok) => (ok ? run(payload, reply, action) : undefined));
    };
    let queue: Promise<unknown> = Promise.resolve();
    const run = (
      payload: unknown,
      reply: (r: Reply) => void,
      action: (group: string) => Promise<Reply>,
    ) => {
      const group = groupOf(payload);
      if (group === undefined) return reply({ error: "bad_request" });
      return action(group).then(reply, (e: unknown) => {
        if (e instanceof MembershipError && e.code === "STORE_UNAVAILABLE")
          return reply({ error: "unavailable" });
        log.error(
          { event: "hub.error", endpoint: "socket.io", connectionId: socket.id, err: e },
          "handling an event failed",
        );
        reply({ error: "internal" });
      });
    };
    /**
     * Handles an event, whatever a client sent with it: the ack is the last argument if it is a
     * function (`420["send"]` carries nothing else), the payload the first one that is not.
     */
    const on = (
      event: keyof ClientEvents,
      action: (payload: unknown, group: string) => Promise<Reply>,
    ) =>
      (socket as unknown as EventEmitter).on(event, (...args: unknown[]) => {
        const ack = typeof args.at(-1) === "function" ? args.pop() : undefined;
        const payload = args[0];
        handle(payload, ack, (group) => action(payload, group));
      });
    on("send", async (payload, group) => {
      const text = (payload as { text?: unknown }).text;
      if (typeof text !== "string" || !text.isWellFormed()) return { error: "bad_request" };
      if (!sync.isInGroup(socket.id, group)) return { error: "not_member", group };
      await chat.send({ group }, { group, from: userId, text, at: new Date().toISOString() });
      return { ok: true };
    });
    on("join", async (_payload, group) => {
      if (!config.openGroups.includes(group)) return { error: "forbidden", group };
      await sync.grant(userId, group);
      return { ok: true };
    });
    on("online", async (payload, group) => {
      const after = (payload as { after?: unknown }).after;
      if (after !== undefined && !isValidName(after)) return { error: "bad_request" };
      if (!sync.isInGroup(socket.id, group)) return { error: "not_member", group };
      const online = await onlineOf(chat.presence, group, after);
      return online === "unavailable" ? { error: "unavailable", group } : { group, ...online };
    });
    on("leave", async (_payload, group) =>
      (await sync.revoke(userId, group, "left")) ? { ok: true } : { error: "not_member", group },
    );
  });

  const url = await listen(http, config);
  origins.listening(url);
  const closeOps = await listenOps(routes, log);

  return {
    url,
    store,
    failed,
    async close() {
      await io.close(); // disconnects every socket and closes the HTTP server
      await closeOps();
      await sync.close();
      await chat.close();
      guard.close();
      obs.close();
      await store.close();
    },
  };
}
