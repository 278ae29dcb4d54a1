import { readFile } from "node:fs/promises";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import { type RawData, WebSocket, WebSocketServer } from "ws";
import { bindSignalR, HubError, invocation, type SignalRHub } from "../adapters/hubs/signalr.js";
import {
  bindWs,
  refuseUpgrade,
  requestTarget,
  type WsHub,
  WsRefusal,
} from "../adapters/hubs/ws.js";
import { isValidName, MembershipError, type MembershipStore } from "../adapters/index.js";
import { authenticate, configurePassport } from "./auth.js";
import { ChatBus, onlineOf, recentFor, renderChat, resumedMessage, resumeOf } from "./chat-bus.js";
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

/** The most messages `History` streams: what a look back needs, not a dump of the group. */
const MAX_HISTORY_COUNT = 100;

/** Frames over this size close the connection with 1009 (message too big). */
const MAX_FRAME_BYTES = 64 * 1024;
/** The latest moment a Date can hold (a token may claim any `exp`). */
const MAX_DATE = 8.64e15;
const PAGE = new URL("./public/index.html", import.meta.url);
/** The official SignalR browser client, served by the sample for the page's SignalR mode. */
const SIGNALR_CLIENT = new URL(
  "../node_modules/@microsoft/signalr/dist/browser/signalr.min.js",
  import.meta.url,
);
/** Its MessagePack protocol, for `?hubProtocol=messagepack`. */
const SIGNALR_MSGPACK = new URL(
  "../node_modules/@microsoft/signalr-protocol-msgpack/dist/browser/signalr-protocol-msgpack.min.js",
  import.meta.url,
);
/** Files served as they are: path, content type, cache policy. */
const FILES: Record<string, readonly [URL, string, string]> = {
  "/": [PAGE, "text/html; charset=utf-8", "no-store"],
  "/vendor/signalr.js": [SIGNALR_CLIENT, "text/javascript; charset=utf-8", "max-age=3600"],
  "/vendor/signalr-msgpack.js": [SIGNALR_MSGPACK, "text/javascript; charset=utf-8", "max-age=3600"],
};

/** A connection of either endpoint, as the chat sees it. */
type Connection = { id: string; userId: string };

type ClientMessage =
  | { type: "send"; group: string; text: string }
  | { type: "whisper"; to: string; text: string }
  | { type: "join"; group: string }
  | { type: "leave"; group: string }
  | { type: "online"; group: string; after?: string };

const byteLength = (data: RawData) =>
  Array.isArray(data)
    ? data.reduce((sum, part) => sum + part.length, 0)
    : data instanceof ArrayBuffer
      ? data.byteLength
      : data.length;

/** Parses one client frame; `undefined` for anything that is not exactly a known message. */
function parseClientMessage(data: RawData, isBinary: boolean): ClientMessage | undefined {
  if (isBinary) return undefined;
  let message: unknown;
  try {
    message = JSON.parse(data.toString());
  } catch {
    return undefined; // not JSON: answered with bad_request by the caller
  }
  if (typeof message !== "object" || message === null || Array.isArray(message)) return undefined;
  return checkClientMessage(message as Record<string, unknown>);
}

/** A client's request, from either protocol; `undefined` unless it is exactly a known one. */
function checkClientMessage(m: Record<string, unknown>): ClientMessage | undefined {
  const text = typeof m.text === "string" && m.text.isWellFormed() ? m.text : undefined;
  switch (m.type) {
    case "send":
      return isValidName(m.group) && text !== undefined
        ? { type: "send", group: m.group, text }
        : undefined;
    case "whisper":
      return isValidName(m.to) && text !== undefined
        ? { type: "whisper", to: m.to, text }
        : undefined;
    case "join":
    case "leave":
      return isValidName(m.group) ? { type: m.type, group: m.group } : undefined;
    case "online":
      if (!isValidName(m.group) || (m.after !== undefined && !isValidName(m.after)))
        return undefined;
      return { type: "online", group: m.group, ...(m.after !== undefined && { after: m.after }) };
    default:
      return undefined;
  }
}

export interface HubServer {
  readonly url: string;
  readonly store: MembershipStore;
  /** Resolves when the server can no longer serve (the table's feed was switched under it). */
  readonly failed: Promise<Error>;
  close(): Promise<void>;
}

/**
 * Starts the sample hub: HTTP (page, /healthz, dev /token), the WebSocket endpoint /hub and the
 * SignalR endpoint /signalr, on one store: a group's messages reach its members on both.
 */
export async function startHubServer(config: SampleConfig): Promise<HubServer> {
  const obs: Observability = new Observability(() => ({
    ws: hub.counts(),
    signalr: signalr.counts(),
  }));
  const { log } = obs;
  const { store, requests, failed } = await openStore(config, log);
  const auth = configurePassport(config.jwt);
  const origins = new Origins(config);
  const encode = (message: object) => Buffer.from(JSON.stringify(message));
  let slowConsumersDropped = 0;
  let rateLimited = 0;
  const guard = await floodGuardOf(config, log);
  // autoPong off: a WebSocket ping is a frame like any other, and pays before it is answered.
  const socketOptions = { noServer: true, allowSynchronousEvents: false, autoPong: false } as const;
  const wss = new WebSocketServer(socketOptions);
  const signalrWss = new WebSocketServer(socketOptions);

  /**
   * Who an upgrade (or a SignalR negotiate) acts for, if they may connect now. An upgrade takes
   * one of the user's connection slots here, atomically, and gives it back when its TCP socket
   * closes, whatever ends it: a refused upgrade, a SignalR handshake that never comes, a close.
   */
  const userIdOf = (endpoint: "ws" | "signalr") => async (request: IncomingMessage) => {
    if (!origins.allows(request)) {
      obs.refused(endpoint, "origin");
      throw new WsRefusal(403, "Forbidden");
    }
    const principal = await authenticate(auth, request);
    if (principal === undefined || principal.expiresAt <= Date.now()) {
      obs.refused(endpoint, "unauthorized");
      return undefined;
    }
    const { userId } = principal;
    const verdict = await guard.admitConnection(userId);
    if (!verdict.ok) {
      obs.refused(endpoint, "rate_limited", userId);
      throw new WsRefusal(429, "Too Many Requests", {
        "Retry-After": String(Math.ceil(verdict.retryAfterMs / 1_000)),
      });
    }
    if (request.headers.upgrade === undefined) {
      // A Server-Sent Events or long-polling request: its messages spend the budget (admit), and
      // its connection takes a slot when it opens (httpSlots).
      if (!requestTarget(request)?.pathname.toLowerCase().endsWith("/negotiate")) return principal;
      // A negotiate holds memory for 30 s until its socket comes: it spends the user's budget.
      const spent = await guard.admit(`negotiate:${userId}`, userId, 0);
      if (spent.ok) return principal;
      obs.refused(endpoint, "rate_limited", userId);
      throw new WsRefusal(429, "Too Many Requests", {
        "Retry-After": String(Math.ceil(spent.retryAfterMs / 1_000)),
      });
    }
    const release = await guard.slots.take(userId);
    if (release === undefined) {
      obs.refused(endpoint, "too_many_connections", userId);
      throw new WsRefusal(429, "Too Many Connections");
    }
    if (request.socket.destroyed) release();
    else request.socket.on("close", release); // release is idempotent: no once() wrapper
    return principal;
  };
  /**
   * The slots of SignalR connections without a WebSocket (Server-Sent Events, long polling),
   * taken when they open and given back when they close: over the cap, closed with an error.
   */
  const httpSlots = new Map<string, () => void>();
  const takeHttpSlot = async ({ id, userId, socket }: Connection & { socket: object }) => {
    if (socket instanceof WebSocket) return;
    const release = await guard.slots.take(userId);
    if (release === undefined) {
      obs.refused("signalr", "too_many_connections", userId);
      return signalr.closeConnection(id, "Too Many Connections");
    }
    if (signalr.connectionsOf(userId).includes(id)) httpSlots.set(id, release);
    else release(); // closed meanwhile
  };
  /** Ends a flooder's ws connection; its reply to the close sits behind its flood, unread. */
  const closeFlooder = (socket: WebSocket) => {
    socket.close(1008, "rate limit exceeded");
    setTimeout(() => socket.terminate(), 1_000).unref();
  };
  const closeSignalR = (connection: Connection) =>
    signalr.closeConnection(connection.id, "rate limit exceeded");
  /**
   * WebSocket control frames count like messages: pings are answered only when admitted, and
   * pongs (one a heartbeat is due, a flood is not) spend the budget too.
   */
  const answerPings = (
    endpoint: "ws" | "signalr",
    connection: Connection & { socket: WebSocket },
    close: () => void,
  ) => {
    const { socket } = connection;
    const spend = (data: Buffer) =>
      // Closing: nothing more counts.
      socket.readyState === WebSocket.OPEN
        ? admit(endpoint, connection, data.length, close)
        : undefined;
    socket.on("ping", (data: Buffer) => {
      void spend(data)?.then((verdict) => {
        if (verdict.ok) socket.pong(data);
      });
    });
    socket.on("pong", (data: Buffer) => void spend(data));
  };
  const onSlowConsumer = () => {
    slowConsumersDropped++; // logged from the library's slow-consumer channel
  };
  /** Whether a client's message may be handled; counts and logs the ones that may not. */
  const admit = async (
    endpoint: "ws" | "signalr",
    connection: Connection,
    bytes: number,
    close: () => void,
  ) => {
    const verdict = await guard.admit(connection.id, connection.userId, bytes);
    if (verdict.ok) return verdict;
    rateLimited++;
    obs.rateLimited(endpoint, connection, verdict.close);
    if (verdict.close) close();
    return verdict;
  };
  const onError = (endpoint: string) => (error: unknown) =>
    log.error({ event: "hub.error", endpoint, err: error }, "hub failure");
  const onClientError = (endpoint: string) => (connection: Connection, error: Error) =>
    obs.clientError(endpoint, connection, error);
  // With Redis, messages reach every other server, whatever its hub (see ChatBus); each server
  // enforces membership for its own connections.
  // Both hubs follow the history themselves (they replay to clients that resume): only
  // whispers come from here.
  const chat = new ChatBus(config, log, store, (target, message) => {
    if (!("group" in target)) {
      void hub.sendToUser(target.userId, encode({ type: "message", ...message }));
      void signalr.sendToUser(target.userId, "message", message);
    }
  });

  const hub: WsHub<WebSocket> = bindWs(wss, {
    store,
    userIdOf: userIdOf("ws"),
    maxMessageBytes: MAX_FRAME_BYTES,
    heartbeatMs: config.heartbeatSeconds * 1_000,
    maxBufferedBytes: config.maxBufferedBytes,
    onConnection: (connection, groups) => {
      const { id, userId } = connection;
      hub.send(id, encode({ type: "welcome", connectionId: id, userId, ...welcomeGroups(groups) }));
      obs.opened("ws", connection, groups.length);
      answerPings("ws", connection, () => closeFlooder(connection.socket));
    },
    onJoin: ({ id }, group, reason) => {
      if (reason === "granted") hub.send(id, encode({ type: "joined", group }));
    },
    onLeave: ({ id }, group, reason) =>
      hub.send(id, encode({ type: "removed", group, reason: reason ?? "revoked" })),
    onSlowConsumer,
    // Group messages are kept: a client that reconnects with `?resume=` gets what it missed.
    history: chat.history,
    resumeOf: (request) => resumeOf(requestTarget(request)),
    renderMessage: (message, replayed) => {
      const rendered = renderChat(message, replayed);
      return rendered && encode({ type: "message", ...rendered });
    },
    onResume: (connection, report) => {
      hub.send(connection.id, encode(resumedMessage(report)));
      obs.resumed("ws", report);
    },
    // Who is online, over both endpoints and, with Redis, every server.
    presence: chat.presence,
    renderPresence: (event) => encode({ type: "presence", ...event }),
    onMessage: (connection, data, isBinary) => handle(connection, data, isBinary),
    onClose: (connection) => obs.closed("ws", connection),
    onError: onError("ws"),
    onClientError: onClientError("ws"),
  });

  const signalr: SignalRHub<WebSocket> = bindSignalR(signalrWss, {
    store,
    path: "/signalr",
    userIdOf: userIdOf("signalr"),
    maxBufferedBytes: config.maxBufferedBytes,
    maxMessageBytes: MAX_FRAME_BYTES,
    onConnection: (connection, groups) => {
      const { id, userId } = connection;
      signalr.send(id, "welcome", { connectionId: id, userId, ...welcomeGroups(groups) });
      obs.opened("signalr", connection, groups.length);
      answerPings("signalr", connection, () => closeSignalR(connection));
      takeHttpSlot(connection).catch(onError("signalr"));
    },
    onJoin: ({ id }, group, reason) => {
      if (reason === "granted") signalr.send(id, "joined", { group });
    },
    onLeave: ({ id }, group, reason) =>
      signalr.send(id, "removed", { group, reason: reason ?? "revoked" }),
    onSlowConsumer,
    // Every message, of any type (pings and ignored ones too), spends the client's budget.
    // withStatefulReconnect(): a dropped WebSocket's connection waits 15 s for the client's next.
    statefulReconnect: true,
    // As the ws endpoint's, in invocations: `message` and `resumed`.
    history: chat.history,
    resumeOf: (request) => resumeOf(requestTarget(request)),
    renderMessage: (message, replayed) => {
      const rendered = renderChat(message, replayed);
      return rendered && invocation("message", [rendered]);
    },
    onResume: (connection, report) => {
      signalr.send(connection.id, "resumed", resumedMessage(report));
      obs.resumed("signalr", report);
    },
    presence: chat.presence,
    presenceTarget: "presence",
    admit: async (connection, bytes) => {
      const verdict = await admit("signalr", connection, bytes, () => closeSignalR(connection));
      if (!verdict.ok) throw new HubError("rate_limited");
    },
    // The binding checks the number of arguments against each method's parameters.
    methods: {
      Send: (connection, group, text) => invoke(connection, { type: "send", group, text }),
      Whisper: (connection, to, text) => invoke(connection, { type: "whisper", to, text }),
      Join: (connection, group) => invoke(connection, { type: "join", group }),
      Leave: (connection, group) => invoke(connection, { type: "leave", group }),
      Online: (connection, group) => onlineInvoked(connection, group, undefined),
      // The next page: hub methods take exactly their arguments, so paging is a method of its own.
      OnlineAfter: (connection, group, after) => {
        if (!isValidName(after)) throw new HubError("bad_request");
        return onlineInvoked(connection, group, after);
      },
    },
    streams: {
      // A member's look back: the group's most recent messages they may see, then the end.
      History: async function* (connection, group, count) {
        if (!isValidName(group) || !Number.isInteger(count) || !((count as number) >= 1))
          throw new HubError("bad_request");
        if (!signalr.isInGroup(connection.id, group)) throw new HubError("not_member");
        const limit = Math.min(count as number, MAX_HISTORY_COUNT);
        yield* await recentFor(chat.history, store, connection.userId, group, limit);
      },
    },
    onClose: (connection) => {
      httpSlots.get(connection.id)?.();
      httpSlots.delete(connection.id);
      obs.closed("signalr", connection);
    },
    onError: onError("signalr"),
    onClientError: onClientError("signalr"),
  });
  await chat.start();
  obs.observePresence(chat.presence);

  /** A SignalR invocation: completes with null, or fails with the error's code. */
  async function invoke(connection: Connection, request: Record<string, unknown>) {
    const message = checkClientMessage(request);
    if (message === undefined) throw new HubError("bad_request");
    const refusal = await act(connection, message, signalr);
    if (refusal !== undefined) throw new HubError(refusal);
    return null;
  }

  async function handle(
    connection: Connection & { socket: WebSocket },
    data: RawData,
    isBinary: boolean,
  ): Promise<void> {
    const { id, socket } = connection;
    const error = (code: string, extra: object = {}): void => {
      hub.send(id, encode({ type: "error", code, ...extra }));
    };
    try {
      const verdict = await admit("ws", connection, byteLength(data), () => closeFlooder(socket));
      if (!verdict.ok) return error("rate_limited", { retryAfterMs: verdict.retryAfterMs });
      const message = parseClientMessage(data, isBinary);
      if (message === undefined) return error("bad_request");
      if (message.type === "online") {
        const online = await onlineIn(connection, message.group, message.after, hub);
        if (typeof online === "string") return error(online, { group: message.group });
        return void hub.send(id, encode({ type: "online", group: message.group, ...online }));
      }
      const refusal = await act(connection, message, hub);
      if (refusal !== undefined)
        error(
          refusal,
          refusal === "unavailable" || !("group" in message) ? {} : { group: message.group },
        );
    } catch (e) {
      log.error(
        { event: "hub.error", endpoint: "ws", connectionId: id, err: e },
        "handling a frame failed",
      );
      return error("internal");
    }
  }

  /** `Online` and `OnlineAfter`: the page, or a HubError with the refusal's code. */
  async function onlineInvoked(connection: Connection, group: unknown, after: string | undefined) {
    if (!isValidName(group)) throw new HubError("bad_request");
    const online = await onlineIn(connection, group, after, signalr);
    if (typeof online === "string") throw new HubError(online);
    return online;
  }

  /**
   * Who is online in a group the connection is in (a page of users, all its connections), or
   * the refusal's code.
   */
  async function onlineIn(
    { id }: Connection,
    group: string,
    after: string | undefined,
    endpoint: Pick<WsHub<WebSocket>, "isInGroup">,
  ) {
    if (!endpoint.isInGroup(id, group)) return "not_member";
    return onlineOf(chat.presence, group, after);
  }

  /**
   * Does what a client asked, whichever protocol it speaks; returns the refusal's code, if any.
   * A group's messages go to its members on both endpoints, each in its own framing.
   */
  async function act(
    { id, userId }: Connection,
    message: ClientMessage,
    endpoint: Pick<WsHub<WebSocket>, "isInGroup" | "grant" | "revoke">,
  ): Promise<string | undefined> {
    try {
      const at = new Date().toISOString();
      switch (message.type) {
        case "online":
          return "bad_request"; // a query, answered by its caller with the list
        case "send": {
          const { group, text } = message;
          if (!endpoint.isInGroup(id, group)) return "not_member";
          await chat.send({ group }, { group, from: userId, text, at });
          return undefined;
        }
        case "whisper": {
          const { to, text } = message;
          await chat.send({ userId: to }, { to, from: userId, text, at });
          return undefined;
        }
        case "join":
          if (!config.openGroups.includes(message.group)) return "forbidden";
          await endpoint.grant(userId, message.group);
          return undefined;
        case "leave":
          // Both endpoints' connections of the user are told "left": MembershipSync keeps a
          // revoke's reason per store, not per hub.
          return (await endpoint.revoke(userId, message.group, "left")) ? undefined : "not_member";
      }
    } catch (e) {
      if (e instanceof MembershipError && e.code === "STORE_UNAVAILABLE") return "unavailable";
      throw e;
    }
  }

  function onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer) {
    const path = requestTarget(req)?.pathname;
    if (path === "/hub") return void hub.handleUpgrade(req, socket, head);
    if (path === "/signalr") return void signalr.handleUpgrade(req, socket, head);
    socket.on("error", () => socket.destroy());
    if (path === undefined) refuseUpgrade(socket, 400, "Bad Request");
    else refuseUpgrade(socket, 404, "Not Found");
  }

  /** SignalR's negotiate and transports, then the sample's own routes. */
  const onRequest = (req: IncomingMessage, res: ServerResponse) =>
    signalr.handleRequest(req, res, () => route(req, res));

  async function route(req: IncomingMessage, res: ServerResponse) {
    const url = requestTarget(req);
    const json = (status: number, body: object) => sendJson(res, status, body);
    if (url === undefined) return json(400, { error: "bad_request" });
    if (req.method !== "GET" && req.method !== "HEAD")
      return json(405, { error: "method_not_allowed" });
    if (await commonRoute(req, res, routes)) return;
    if (url.pathname === "/config") {
      return json(200, { devSignIn: config.devSignIn, openGroups: config.openGroups });
    }
    if (url.pathname === "/whoami") {
      // The page asks this after a failed WebSocket upgrade, whose 401 browsers do not expose.
      const principal = await authenticate(auth, req);
      if (principal === undefined || principal.expiresAt <= Date.now())
        return json(401, { error: "unauthorized" });
      return json(200, {
        userId: principal.userId,
        expiresAt: new Date(Math.min(principal.expiresAt, MAX_DATE)).toISOString(),
      });
    }
    const file = FILES[url.pathname];
    if (file !== undefined) {
      const [path, type, cache] = file;
      const body = await readFile(path).catch(() => undefined);
      if (body === undefined) return json(404, { error: "not_found" });
      res.writeHead(200, { "content-type": type, "cache-control": cache });
      return res.end(body);
    }
    return json(404, { error: "not_found" });
  }

  const server = httpServer(onRequest, log);
  server.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    // Whatever a bug in a route does, it answers this one request, never ends the process.
    try {
      onUpgrade(req, socket, head);
    } catch (error) {
      log.error({ event: "hub.error", err: error }, "handling an upgrade failed");
      socket.destroy();
    }
  });
  const routes: RouteContext = {
    config,
    store,
    presence: chat.presence,
    observability: obs,
    origins,
    stats: () => ({
      connections: wss.clients.size + signalrWss.clients.size,
      slowConsumersDropped,
      rateLimited,
      storageRequests: requests,
    }),
  };
  const url = await listen(server, config);
  origins.listening(url);
  const closeOps = await listenOps(routes, log);

  return {
    url,
    store,
    failed,
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      const sockets = () => [...wss.clients, ...signalrWss.clients];
      for (const ws of sockets()) ws.close(1001, "server shutting down");
      // Give clients a moment to answer the close handshake, then cut the rest.
      const grace = setTimeout(() => {
        for (const ws of sockets()) ws.terminate();
      }, 1_000);
      await closed;
      await closeOps();
      clearTimeout(grace);
      await Promise.all([hub.close(), signalr.close(), chat.close()]);
      obs.close();
      guard.close();
      await store.close();
    },
  };
}
