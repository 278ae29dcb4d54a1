import { randomUUID } from "node:crypto";
import { readFile } from "node:fs/promises";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import { type RawData, WebSocket, WebSocketServer } from "ws";
import { WsGroups } from "../adapters/hubs/ws.js";
import {
  isValidName,
  MembershipError,
  type MembershipStore,
  MembershipSync,
} from "../adapters/index.js";
import { type BroadcastTarget, RedisBroadcast } from "../adapters/redis/index.js";
import { authenticate, configurePassport, type Principal } from "./auth.js";
import type { SampleConfig } from "./config.js";
import { commonRoute, httpServer, listen, openStore, sendJson } from "./http.js";

/** Frames over this size close the connection with 1009 (message too big). */
const MAX_FRAME_BYTES = 64 * 1024;
const MAX_TIMER = 2 ** 31 - 1;
const PAGE = new URL("./public/index.html", import.meta.url);

type ClientMessage =
  | { type: "send"; group: string; text: string }
  | { type: "whisper"; to: string; text: string }
  | { type: "join"; group: string }
  | { type: "leave"; group: string };

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

  /** Frames for a connection held back until its welcome is sent. */
  const early = new Map<string, Buffer[]>();
  const deliver = (connectionId: string, frame: Buffer) => {
    const queue = early.get(connectionId);
    if (queue) queue.push(frame);
    else groups.send(connectionId, frame);
  };
  let slowConsumersDropped = 0;
  const groups = new WsGroups<WebSocket>({
    maxBufferedBytes: config.maxBufferedBytes,
    onSlowConsumer: (connectionId) => {
      slowConsumersDropped++;
      console.error(
        `connection ${connectionId} dropped: over ${config.maxBufferedBytes} bytes unsent`,
      );
    },
    onJoin: (connectionId, group, reason) => {
      if (reason === "granted") deliver(connectionId, encode({ type: "joined", group }));
    },
    onLeave: (connectionId, group, reason) => {
      deliver(connectionId, encode({ type: "removed", group, reason: reason ?? "revoked" }));
    },
  });
  const sync = new MembershipSync({
    store,
    hub: groups,
    onError: (error) => console.error(`hub binding failed: ${String(error)}`),
  });
  const wss = new WebSocketServer({ noServer: true, maxPayload: MAX_FRAME_BYTES });
  /** This server's connections of a user get `frame`. */
  const whisper = (userId: string, frame: Buffer) => {
    for (const target of sync.connectionsOf(userId)) groups.send(target, frame);
  };
  // With Redis, a message reaches the other servers' connections too; each server enforces
  // membership for its own (WsGroups.broadcast sends only to the group's members there).
  const redis = config.redisUrl
    ? new RedisBroadcast({
        url: config.redisUrl,
        deliver: (target, frame) =>
          "group" in target ? groups.broadcast(target.group, frame) : whisper(target.userId, frame),
        onError: (e) => console.error(`redis broadcast: ${String(e)}`),
      })
    : undefined;
  await redis?.start();
  /** Delivers here, then to the other servers; `unavailable` for the sender if Redis is down. */
  const fanOut = async (target: BroadcastTarget, frame: Buffer) => {
    if ("group" in target) groups.broadcast(target.group, frame);
    else whisper(target.userId, frame);
    await redis?.publish(target, frame);
  };

  async function onConnection(ws: WebSocket, { userId, expiresAt }: Principal) {
    const connectionId = randomUUID();
    const send = (message: object) => groups.send(connectionId, encode(message));
    const error = (code: string, extra: object = {}) => send({ type: "error", code, ...extra });
    groups.add(connectionId, ws);
    early.set(connectionId, []);
    const expiry = setTimeout(
      () => ws.close(4401, "token expired"),
      Math.min(expiresAt - Date.now(), MAX_TIMER),
    );
    ws.on("close", () => {
      clearTimeout(expiry);
      early.delete(connectionId);
      sync.disconnect(connectionId);
      groups.remove(connectionId);
    });
    ws.on("error", (e) => console.error(`socket ${connectionId}: ${e.message}`));

    // Frames are handled one at a time, in order, and only once the groups are rehydrated.
    let queue: Promise<unknown> = sync.connect(connectionId, userId).then(
      (joined) => {
        send({ type: "welcome", connectionId, userId, groups: joined });
        for (const frame of early.get(connectionId) ?? []) groups.send(connectionId, frame);
        early.delete(connectionId);
      },
      (e: unknown) => {
        console.error(`rehydrating ${JSON.stringify(userId)} failed: ${String(e)}`);
        ws.close(1011, "membership store unavailable");
      },
    );
    ws.on("message", (data, isBinary) => {
      queue = queue
        .then(() => handle(data, isBinary))
        .catch((e: unknown) => {
          console.error(`handling a frame of ${connectionId} failed: ${String(e)}`);
          error("internal");
        });
    });

    async function handle(data: RawData, isBinary: boolean) {
      if (ws.readyState !== WebSocket.OPEN) return;
      const message = parseClientMessage(data, isBinary);
      if (message === undefined) return error("bad_request");
      try {
        switch (message.type) {
          case "send": {
            const { group, text } = message;
            if (!sync.isInGroup(connectionId, group)) return error("not_member", { group });
            const at = new Date().toISOString();
            await fanOut({ group }, encode({ type: "message", group, from: userId, text, at }));
            return;
          }
          case "whisper": {
            const { to, text } = message;
            const frame = encode({
              type: "message",
              to,
              from: userId,
              text,
              at: new Date().toISOString(),
            });
            await fanOut({ userId: to }, frame);
            return;
          }
          case "join":
            if (!config.openGroups.includes(message.group))
              return error("forbidden", { group: message.group });
            await sync.grant(userId, message.group);
            return;
          case "leave":
            if (!(await sync.revoke(userId, message.group, "left"))) {
              return error("not_member", { group: message.group });
            }
            return;
        }
      } catch (e) {
        if (e instanceof MembershipError && e.code === "STORE_UNAVAILABLE")
          return error("unavailable");
        throw e;
      }
    }
  }

  async function onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer) {
    socket.on("error", () => socket.destroy());
    const refuse = (status: number, reason: string) => {
      socket.end(
        `HTTP/1.1 ${status} ${reason}\r\nConnection: close\r\nContent-Type: text/plain\r\n` +
          `Content-Length: ${Buffer.byteLength(reason)}\r\n\r\n${reason}`,
      );
    };
    if (new URL(req.url ?? "/", "http://localhost").pathname !== "/hub")
      return refuse(404, "Not Found");
    let principal: Principal | undefined;
    try {
      principal = await authenticate(auth, req);
    } catch (e) {
      console.error(`authentication failed: ${String(e)}`);
      return refuse(500, "Internal Server Error");
    }
    if (principal === undefined || principal.expiresAt <= Date.now())
      return refuse(401, "Unauthorized");
    const who = principal;
    wss.handleUpgrade(req, socket, head, (ws) => void onConnection(ws, who));
  }

  async function onRequest(req: IncomingMessage, res: ServerResponse) {
    const url = new URL(req.url ?? "/", "http://localhost");
    const json = (status: number, body: object) => sendJson(res, status, body);
    if (req.method !== "GET" && req.method !== "HEAD")
      return json(405, { error: "method_not_allowed" });
    const stats = () => ({
      connections: wss.clients.size,
      slowConsumersDropped,
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
  server.on("upgrade", (req, socket, head) => void onUpgrade(req, socket, head));
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
      await sync.close();
      await redis?.close();
      await store.close();
    },
  };
}
