import { readFile } from "node:fs/promises";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import { type RawData, type WebSocket, WebSocketServer } from "ws";
import { bindWs, type WsHub, WsRefusal } from "../adapters/hubs/ws.js";
import { isValidName, MembershipError, type MembershipStore } from "../adapters/index.js";
import { RedisBroadcast } from "../adapters/redis/index.js";
import { authenticate, configurePassport } from "./auth.js";
import type { SampleConfig } from "./config.js";
import { commonRoute, httpServer, listen, openStore, sendJson } from "./http.js";
import { floodGuardOf } from "./limits.js";

/** Frames over this size close the connection with 1009 (message too big). */
const MAX_FRAME_BYTES = 64 * 1024;
const PAGE = new URL("./public/index.html", import.meta.url);

type ClientMessage =
  | { type: "send"; group: string; text: string }
  | { type: "whisper"; to: string; text: string }
  | { type: "join"; group: string }
  | { type: "leave"; group: string };

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
  const m = message as Record<string, unknown>;
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
    default:
      return undefined;
  }
}

export interface HubServer {
  readonly url: string;
  readonly store: MembershipStore;
  close(): Promise<void>;
}

/** Starts the sample hub: HTTP (page, /healthz, dev /token) and the WebSocket endpoint /hub. */
export async function startHubServer(config: SampleConfig): Promise<HubServer> {
  const { store, requests } = await openStore(config);
  const auth = configurePassport(config.jwt);
  const encode = (message: object) => Buffer.from(JSON.stringify(message));
  let slowConsumersDropped = 0;
  let rateLimited = 0;
  const guard = await floodGuardOf(config);
  const wss = new WebSocketServer({
    noServer: true,
    maxPayload: MAX_FRAME_BYTES,
    allowSynchronousEvents: false,
  });
  // With Redis, messages reach the other servers' connections too; each server enforces
  // membership for its own (a group message goes only to the group's members there).
  const hub: WsHub<WebSocket> = bindWs(wss, {
    store,
    userIdOf: async (request) => {
      const principal = await authenticate(auth, request);
      if (principal === undefined || principal.expiresAt <= Date.now()) return undefined;
      if (hub.connectionsOf(principal.userId).length >= config.limits.connectionsPerUser)
        throw new WsRefusal(429, "Too Many Connections");
      const verdict = await guard.admitConnection(principal.userId);
      if (!verdict.ok)
        throw new WsRefusal(429, "Too Many Requests", {
          "Retry-After": String(Math.ceil(verdict.retryAfterMs / 1_000)),
        });
      return principal;
    },
    maxBufferedBytes: config.maxBufferedBytes,
    ...(config.redisUrl && { bus: new RedisBroadcast({ url: config.redisUrl }) }),
    onConnection: ({ id, userId }, groups) =>
      hub.send(id, encode({ type: "welcome", connectionId: id, userId, groups })),
    onJoin: ({ id }, group, reason) => {
      if (reason === "granted") hub.send(id, encode({ type: "joined", group }));
    },
    onLeave: ({ id }, group, reason) =>
      hub.send(id, encode({ type: "removed", group, reason: reason ?? "revoked" })),
    onSlowConsumer: ({ id }) => {
      slowConsumersDropped++;
      console.error(`connection ${id} dropped: over ${config.maxBufferedBytes} bytes unsent`);
    },
    onMessage: (connection, data, isBinary) => handle(connection, data, isBinary),
    onError: (error) => console.error(`hub: ${String(error)}`),
  });
  await hub.ready();

  async function handle(
    { id, userId, socket }: { id: string; userId: string; socket: WebSocket },
    data: RawData,
    isBinary: boolean,
  ): Promise<void> {
    const error = (code: string, extra: object = {}): void => {
      hub.send(id, encode({ type: "error", code, ...extra }));
    };
    try {
      const verdict = await guard.admit(id, userId, byteLength(data));
      if (!verdict.ok) {
        rateLimited++;
        error("rate_limited", { retryAfterMs: verdict.retryAfterMs });
        if (verdict.close) {
          console.error(
            `connection ${id} of ${JSON.stringify(userId)} closed: over the rate limit`,
          );
          socket.close(1008, "rate limit exceeded");
          // A flooder's reply to the close sits behind its flood, in a socket no longer read.
          setTimeout(() => socket.terminate(), 1_000).unref();
        }
        return;
      }
      const message = parseClientMessage(data, isBinary);
      if (message === undefined) return error("bad_request");
      switch (message.type) {
        case "send": {
          const { group, text } = message;
          if (!hub.isInGroup(id, group)) return error("not_member", { group });
          const at = new Date().toISOString();
          await hub.broadcast(group, encode({ type: "message", group, from: userId, text, at }));
          return;
        }
        case "whisper": {
          const { to, text } = message;
          const at = new Date().toISOString();
          await hub.sendToUser(to, encode({ type: "message", to, from: userId, text, at }));
          return;
        }
        case "join":
          if (!config.openGroups.includes(message.group))
            return error("forbidden", { group: message.group });
          await hub.grant(userId, message.group);
          return;
        case "leave":
          if (!(await hub.revoke(userId, message.group, "left")))
            return error("not_member", { group: message.group });
          return;
      }
    } catch (e) {
      if (e instanceof MembershipError && e.code === "STORE_UNAVAILABLE")
        return error("unavailable");
      console.error(`handling a frame of ${id} failed: ${String(e)}`);
      return error("internal");
    }
  }

  function onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer) {
    if (new URL(req.url ?? "/", "http://localhost").pathname === "/hub")
      return void hub.handleUpgrade(req, socket, head);
    socket.on("error", () => socket.destroy());
    socket.end("HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 9\r\n\r\nNot Found");
  }

  async function onRequest(req: IncomingMessage, res: ServerResponse) {
    const url = new URL(req.url ?? "/", "http://localhost");
    const json = (status: number, body: object) => sendJson(res, status, body);
    if (req.method !== "GET" && req.method !== "HEAD")
      return json(405, { error: "method_not_allowed" });
    const stats = () => ({
      connections: wss.clients.size,
      slowConsumersDropped,
      rateLimited,
      storageRequests: requests,
    });
    if (await commonRoute(req, res, { config, store, stats })) return;
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
        expiresAt: new Date(principal.expiresAt).toISOString(),
      });
    }
    if (url.pathname === "/") {
      const page = await readFile(PAGE).catch(() => undefined);
      if (page === undefined) return json(404, { error: "not_found" });
      res.writeHead(200, {
        "content-type": "text/html; charset=utf-8",
        "cache-control": "no-store",
      });
      return res.end(page);
    }
    return json(404, { error: "not_found" });
  }

  const server = httpServer(onRequest);
  server.on("upgrade", onUpgrade);
  const url = await listen(server, config);

  return {
    url,
    store,
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      for (const ws of wss.clients) ws.close(1001, "server shutting down");
      // Give clients a moment to answer the close handshake, then cut the rest.
      const grace = setTimeout(() => {
        for (const ws of wss.clients) ws.terminate();
      }, 1_000);
      await closed;
      clearTimeout(grace);
      await hub.close();
      guard.close();
      await store.close();
    },
  };
}
