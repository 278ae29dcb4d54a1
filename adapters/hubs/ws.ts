import { randomUUID } from "node:crypto";
import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import { type AddToGroupOptions, MembershipError, type MembershipStore } from "../contract.js";
import type {
  GroupResume,
  HistoryMessage,
  MessageHistory,
  ResumeRequest,
} from "../history/history.js";
import { type ResumeOutcome, Resumes } from "../history/resumes.js";
import type { Presence, PresenceEvent, PresenceView } from "../presence/presence.js";
import { type JoinReason, type LeaveReason, MembershipSync } from "../sync/membership-sync.js";
import { refuseUpgrade, requestTarget } from "./http.js";
import { type GroupSocket, toBuffer, WsGroups } from "./ws-groups.js";

export { refuseUpgrade, requestTarget } from "./http.js";
export { type GroupSocket, WsGroups, type WsGroupsOptions } from "./ws-groups.js";

/** Who a message is for: the members of a group, or the connections of a user. */
export type BroadcastTarget = { group: string } | { userId: string };

/**
 * Messages between hub servers: each server delivers to its own connections and publishes once
 * for the others. `RedisBroadcast` (`hub-membership/redis`) is one.
 */
export interface ServerBus {
  /** Starts handing what other servers publish to `deliver`; resolves once it does. */
  start(deliver: (target: BroadcastTarget, frame: Buffer) => void): Promise<unknown>;
  publish(target: BroadcastTarget, frame: Buffer): Promise<void>;
  close(): Promise<void>;
}

/** What {@link bindWs} uses of a `ws` WebSocket. */
export interface BoundSocket extends GroupSocket {
  close(code?: number, reason?: string): void;
  /** Stops and resumes reading from the client (ws 8 has both). */
  pause?(): void;
  resume?(): void;
  on(
    event: "message",
    listener: (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean) => void,
  ): unknown;
  on(event: "close", listener: () => void): unknown;
  on(event: "error", listener: (error: Error) => void): unknown;
  on(event: "pong", listener: () => void): unknown;
  /** For the heartbeat (ws 8 has it). */
  ping?(): void;
}

/** What {@link bindWs} uses of a `ws` `WebSocketServer`. */
export interface BoundServer<S extends BoundSocket> {
  /** ws reads `maxPayload` at every upgrade: the binding lowers it to its message limit. */
  readonly options: { maxPayload?: number | undefined };
  handleUpgrade(
    request: IncomingMessage,
    socket: Duplex,
    head: Buffer,
    callback: (socket: S, request: IncomingMessage) => void,
  ): void;
  on(event: "connection", listener: (socket: S, request: IncomingMessage) => void): unknown;
  emit(event: "connection", socket: S, request: IncomingMessage): boolean;
}

/** Thrown by `userIdOf` to refuse an upgrade with this HTTP status. */
export class WsRefusal extends Error {
  readonly status: number;
  /** Extra response headers, `Retry-After` say. */
  readonly headers: Readonly<Record<string, string>>;

  constructor(status: number, message: string, headers: Record<string, string> = {}) {
    super(message);
    this.status = status;
    this.headers = headers;
  }
}

/**
 * Who an upgrade request acts for: a user id, or one with the moment its credentials expire and
 * the connection's id if the protocol chose it already (SignalR's negotiate does).
 */
export type WsPrincipal =
  | string
  | { userId: string; expiresAt?: Date | number; connectionId?: string };

/** What `onResume` is told: see {@link WsBindingOptions.onResume}. */
export interface ResumeReport {
  /** Whether the client presented positions (`resumeOf`); `false` on a fresh connect. */
  readonly resumed: boolean;
  /** The client's position in every group it gets no message of, from now on. */
  readonly since: string;
  /** On a resume, each group the connection is in, with its position; replayed messages follow. */
  readonly groups: readonly GroupResume[];
  /** Groups the client presented a position for but is no longer a member of. */
  readonly removed: readonly string[];
}

/** A connection of {@link bindWs}, as its callbacks see it. */
export interface WsConnection<S extends BoundSocket> {
  readonly id: string;
  readonly userId: string;
  readonly socket: S;
  readonly request: IncomingMessage;
}

export interface WsBindingOptions<S extends BoundSocket> {
  store: MembershipStore;
  /**
   * Who an upgrade request acts for, from your own authentication (passport, a JWT check, ...):
   * `undefined` refuses it with HTTP 401 before any socket exists; a thrown {@link WsRefusal}
   * with its status (429 for too many connections, say); any other throw with 500 and `onError`.
   * With `expiresAt`, the connection is closed with 4401 when it passes.
   */
  userIdOf(request: IncomingMessage): WsPrincipal | undefined | Promise<WsPrincipal | undefined>;
  /**
   * The connection is in its stored groups (`groups`, sorted) and nothing has been sent to it
   * yet: send your welcome here. Whatever `send` is asked for it meanwhile follows this.
   */
  onConnection?: (connection: WsConnection<S>, groups: string[]) => void;
  /** A message from the client, one at a time, in order, only after `onConnection`. */
  onMessage?: (
    connection: WsConnection<S>,
    data: Buffer | ArrayBuffer | Buffer[],
    isBinary: boolean,
  ) => void | Promise<void>;
  /** Called after a connection joined a group (tell the client, if the reason calls for it). */
  onJoin?: (connection: WsConnection<S>, group: string, reason: JoinReason | undefined) => void;
  /** Called after a connection left a group, before anything else is sent to the group. */
  onLeave?: (connection: WsConnection<S>, group: string, reason: LeaveReason | undefined) => void;
  onClose?: (connection: WsConnection<S>) => void;
  /**
   * The largest message a client may send, in bytes. Default 1 MiB. The binding lowers the
   * `WebSocketServer`'s `maxPayload` to it (ws's own default is 100 MiB): a larger frame closes
   * the connection with 1009 before it is buffered, and reaches `onClientError`.
   */
  maxMessageBytes?: number;
  /**
   * A client broke the protocol (a frame over `maxMessageBytes`, invalid UTF-8, a bad frame, a
   * failed handshake) and its connection is being closed: the place to log it, at warn, with
   * the connection's user. Not a failure of the server: never reported to `onError`.
   */
  onClientError?: (connection: WsConnection<S>, error: Error) => void;
  /** Unsent bytes past which a client that does not read is terminated. Default 4 MiB. */
  maxBufferedBytes?: number;
  onSlowConsumer?: (connection: WsConnection<S>) => void;
  /** Messages to and from other servers (e.g. `RedisBroadcast`); started by `bindWs`. */
  bus?: ServerBus;
  /**
   * Messages of one connection waiting for `onMessage` past which the server stops reading from
   * it until they are handled: a flood stays in that client's TCP window, not in server memory.
   * Default 16.
   */
  maxQueuedMessages?: number;
  /** Where failures go that no caller can be told of. Default: a process warning. */
  onError?: (error: unknown) => void;
  /**
   * How often each connection is pinged (a WebSocket ping frame, which clients answer by
   * themselves); one that sent nothing, not even the pong, since the previous ping is
   * terminated: a client that stopped answering (a laptop shut, a network gone) does not hold
   * its place. Default 30 s; 0 turns it off (a protocol with its own keep-alive).
   */
  heartbeatMs?: number;
  /**
   * A protocol's opening handshake (SignalR's, say): the connection's first message comes here
   * instead of `onMessage`, and its groups are read only once this resolves. Resolve to the part
   * of the message after the handshake, if any, to have it handled as a message; to `false` when
   * the handshake is not complete yet (the next message comes here too); throw to end the
   * connection (through `close`, with 1002 and the error's message, reported to
   * `onClientError`). No complete handshake within `handshakeTimeoutMs` (default 15 s) ends it
   * with {@link HANDSHAKE_TIMED_OUT}.
   */
  handshake?: (
    connection: WsConnection<S>,
    data: Buffer,
    isBinary: boolean,
  ) => Buffer | undefined | false | Promise<Buffer | undefined | false>;
  handshakeTimeoutMs?: number;
  /**
   * How the hub ends a connection itself: credentials expired (4401), the store unavailable when
   * it connects (1011), a failed handshake (1002). Default `socket.close(code, reason)`; a
   * protocol with its own close message sends it first.
   */
  close?: (connection: WsConnection<S>, code: number, reason: string) => void;
  /**
   * Keeps every group message in a {@link MessageHistory}: `broadcast` publishes through it (to
   * every server sharing it, instead of the bus), and a client that reconnects with the
   * positions of `resumeOf` gets the messages it missed replayed.
   */
  history?: MessageHistory;
  /**
   * A group message as the client gets it, live (`replayed` false) or replayed; it should carry
   * `message.position`, which the client presents when it reconnects. Default: the payload.
   * `undefined`: not delivered (a payload the protocol does not accept).
   */
  renderMessage?: (message: HistoryMessage, replayed: boolean) => Buffer | string | undefined;
  /**
   * The positions a reconnecting client presents (group to position), read from its upgrade
   * request (a query parameter, say: see `parsePositions`); `undefined` for a fresh connect.
   */
  resumeOf?: (request: IncomingMessage) => ResumeRequest | undefined;
  /**
   * With a history, on every connect once the groups are read and what the client missed is
   * known: called just before the replayed messages are sent (and before any live one), to tell
   * the client its position in each group, on a resume which groups were `recovered` (the others
   * it should re-fetch), and which it presented but is no longer a member of (`removed`).
   */
  onResume?: (connection: WsConnection<S>, resume: ResumeReport) => void;
  /**
   * Who is connected in each group (see `Presence`): one `MemoryPresence` shared by the bindings
   * of a process, or a `RedisPresence` shared by every server. Read it as `hub.presence`.
   */
  presence?: Presence;
  /**
   * With `presence`: what to send to a group's connections on this server when a user comes
   * online in it or goes (each server sends to its own connections). `undefined`: nothing.
   */
  renderPresence?: (event: PresenceEvent) => Buffer | string | undefined;
}

const OPEN = 1;
const MAX_TIMER = 2 ** 31 - 1;
const DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024;
/** The reason `close` is given when a handshake did not complete in time. */
export const HANDSHAKE_TIMED_OUT = "handshake timed out";

/**
 * A `ws` hub with durable groups: the twin of `bindSocketIo`. Authenticates each upgrade with
 * `userIdOf` (401 before any socket), joins the connection to its user's stored groups, then
 * hands it to `onConnection` and its messages to `onMessage`; grants, revokes and expiries from
 * any process join or leave every connection of the user here; `broadcast` reaches the group's
 * connections here and, with a `bus`, on every other server. Call `handleUpgrade` from your HTTP
 * server's `upgrade` event (the `WebSocketServer` made with `noServer: true`).
 */
export class WsHub<S extends BoundSocket> {
  readonly #wss: BoundServer<S>;
  readonly #options: WsBindingOptions<S>;
  readonly #groups: WsGroups<S>;
  readonly #sync: MembershipSync;
  readonly #connections = new Map<string, WsConnection<S>>();
  /** Frames for a connection whose `onConnection` has not run yet. */
  readonly #held = new Map<string, Array<Buffer | string>>();
  readonly #principals = new WeakMap<
    IncomingMessage,
    { userId: string; expiresAt?: number; connectionId?: string }
  >();
  readonly #onError: (error: unknown) => void;
  readonly #started: Promise<unknown>;
  /** Each connection's heartbeat, all driven by one timer. */
  readonly #beats = new Map<string, { socket: S; heard: boolean }>();
  readonly #heartbeat: NodeJS.Timeout | undefined;
  readonly #resumes: Resumes | undefined;
  readonly #unsubscribe: (() => void) | undefined;

  constructor(wss: BoundServer<S>, options: WsBindingOptions<S>) {
    this.#wss = wss;
    this.#options = options;
    const maxMessageBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
    wss.options.maxPayload = Math.min(wss.options.maxPayload ?? Infinity, maxMessageBytes);
    this.#onError =
      options.onError ??
      ((error) => process.emitWarning(`hub-membership: bindWs: ${String(error)}`));
    const of = (id: string) => this.#connections.get(id);
    this.#groups = new WsGroups<S>({
      ...(options.maxBufferedBytes !== undefined && { maxBufferedBytes: options.maxBufferedBytes }),
      onJoin: (id, group, reason) => {
        const connection = of(id);
        if (connection) options.onJoin?.(connection, group, reason);
      },
      onLeave: (id, group, reason) => {
        const connection = of(id);
        if (connection) options.onLeave?.(connection, group, reason);
      },
      onSlowConsumer: (id) => {
        const connection = of(id);
        if (connection) options.onSlowConsumer?.(connection);
      },
    });
    const { history, renderPresence } = options;
    const resumes = history && new Resumes(history, this.#onError);
    this.#resumes = resumes;
    this.#sync = new MembershipSync({
      store: options.store,
      // A resuming connection joins its groups only once its replay is read (see Resumes).
      hub:
        resumes === undefined
          ? this.#groups
          : {
              join: (id, group, reason) => {
                const connection = of(id);
                if (connection === undefined) return;
                const late = resumes.join(id, connection.userId, group, reason, (messages) => {
                  this.#groups.join(id, group, reason);
                  const held = messages.map((message) => ({ message, replayed: false }));
                  this.#groups.sendAll(id, this.#frames(held));
                });
                if (!late) this.#groups.join(id, group, reason);
              },
              leave: (id, group, reason) => {
                const held = resumes.leave(id, group);
                if (held === false) return this.#groups.leave(id, group, reason);
                const connection = of(id);
                if (held === "resuming" && connection) options.onLeave?.(connection, group, reason);
              },
            },
      onError: this.#onError,
      ...(history && { history }),
      ...(options.presence && { presence: options.presence }),
      ...(renderPresence && {
        onPresence: (event: PresenceEvent) => {
          if (this.#groups.size(event.group) === 0) return;
          const frame = renderPresence(event);
          if (frame === undefined) return;
          this.#groups.broadcast(
            event.group,
            typeof frame === "string" ? Buffer.from(frame) : frame,
          );
        },
      }),
    });
    this.#unsubscribe = history?.subscribe((message) => this.#deliverMessage(message));
    this.#started =
      options.bus?.start((target, frame) => this.#deliverHere(target, frame)) ?? Promise.resolve();
    wss.on("connection", (socket, request) => void this.#connected(socket, request));
    const heartbeatMs = options.heartbeatMs ?? 30_000;
    if (heartbeatMs > 0) {
      this.#heartbeat = setInterval(() => {
        for (const beat of this.#beats.values()) {
          if (!beat.heard) beat.socket.terminate();
          else {
            beat.heard = false;
            beat.socket.ping?.();
          }
        }
      }, heartbeatMs);
      this.#heartbeat.unref();
    }
  }

  /** Resolves once the bus (if any) delivers other servers' messages. */
  ready(): Promise<unknown> {
    return this.#started;
  }

  /**
   * Authenticates an upgrade and, if `userIdOf` names a user, completes it. Answers every other
   * outcome itself, with the socket closed: 400 for a request target that is not a URL, 401 (or
   * a {@link WsRefusal}'s status, or 500) from `userIdOf`, and ws's own 400s for a malformed
   * WebSocket handshake. Never rejects. Call it from your server's `upgrade` event for your path.
   */
  async handleUpgrade(request: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    socket.on("error", () => socket.destroy());
    if (requestTarget(request) === undefined) return refuseUpgrade(socket, 400, "Bad Request");
    let principal: WsPrincipal | undefined;
    try {
      principal = await this.#options.userIdOf(request);
    } catch (error) {
      if (error instanceof WsRefusal)
        return refuseUpgrade(socket, error.status, error.message, error.headers);
      this.#onError(error);
      return refuseUpgrade(socket, 500, "Internal Server Error");
    }
    const who = normalize(principal);
    if (who === undefined) return refuseUpgrade(socket, 401, "Unauthorized");
    try {
      this.#wss.handleUpgrade(request, socket, head, (ws, req) => {
        this.#principals.set(req, who);
        this.#wss.emit("connection", ws, req);
      });
    } catch (error) {
      this.#onError(error);
      refuseUpgrade(socket, 500, "Internal Server Error");
    }
  }

  grant(userId: string, group: string, options?: AddToGroupOptions): Promise<void> {
    return this.#sync.grant(userId, group, options);
  }

  revoke(userId: string, group: string, reason?: "revoked" | "left"): Promise<boolean> {
    return this.#sync.revoke(userId, group, reason);
  }

  isInGroup(connectionId: string, group: string): boolean {
    return this.#sync.isInGroup(connectionId, group);
  }

  connectionsOf(userId: string): string[] {
    return this.#sync.connectionsOf(userId);
  }

  groupsOfConnection(connectionId: string): string[] {
    return this.#sync.groupsOfConnection(connectionId);
  }

  /** Who is connected in each group, with the `presence` option; `undefined` without. */
  get presence(): PresenceView | undefined {
    return this.#sync.presence;
  }

  /** Connections here, and groups with at least one of them: for a gauge. */
  counts(): { connections: number; groups: number } {
    return { connections: this.#connections.size, groups: this.#groups.groupCount };
  }

  /**
   * Sends `data` as one text message to every connection in `group` here (framed once) and, with
   * a bus, on every other server. Rejects with `STORE_UNAVAILABLE` if the bus cannot take it
   * (this server's connections have it already). With a `history`, publishes it there instead:
   * every server sharing the history delivers it (rendered by `renderMessage`), or none does and
   * this rejects.
   */
  async broadcast(group: string, data: Buffer | string): Promise<void> {
    const frame = typeof data === "string" ? Buffer.from(data) : data;
    // Through the history, every server sharing it delivers it, this one included.
    if (this.#options.history) return void (await this.#options.history.publish(group, frame));
    this.#groups.broadcast(group, frame);
    await this.#options.bus?.publish({ group }, frame);
  }

  /** Sends `data` to every connection of `userId`, here and, with a bus, on every other server. */
  async sendToUser(userId: string, data: Buffer | string): Promise<void> {
    const frame = typeof data === "string" ? Buffer.from(data) : data;
    this.#deliverHere({ userId }, frame);
    await this.#options.bus?.publish({ userId }, frame);
  }

  /** Sends `data` to one connection here; held until its `onConnection` has run. */
  /** See {@link WsGroups.encode}: what is held for the connection is encoded too. */
  encode(connectionId: string, encode: (payload: Buffer) => Buffer): void {
    this.#groups.encode(connectionId, encode);
  }

  send(connectionId: string, data: Buffer | string): boolean {
    const held = this.#held.get(connectionId);
    if (held === undefined) return this.#groups.send(connectionId, data);
    held.push(data);
    return true;
  }

  /** Stops following the store and the bus; the sockets and the server are yours to close. */
  async close(): Promise<void> {
    clearInterval(this.#heartbeat);
    this.#unsubscribe?.();
    await this.#sync.close();
    await this.#options.bus?.close();
  }

  #deliverMessage(message: HistoryMessage): void {
    this.#resumes?.hold(message);
    if (this.#groups.size(message.group) === 0) return;
    const frame = this.#render(message, false);
    if (frame !== undefined) this.#groups.broadcast(message.group, frame);
  }

  #render(message: HistoryMessage, replayed: boolean): Buffer | string | undefined {
    const { renderMessage } = this.#options;
    return renderMessage ? renderMessage(message, replayed) : message.payload;
  }

  /** The frames of `messages`, as `renderMessage` renders them. */
  #frames(
    messages: ReadonlyArray<{ message: HistoryMessage; replayed: boolean }>,
  ): Array<Buffer | string> {
    const frames: Array<Buffer | string> = [];
    for (const { message, replayed } of messages) {
      const frame = this.#render(message, replayed);
      if (frame !== undefined) frames.push(frame);
    }
    return frames;
  }

  /** Joins a resumed connection to its groups and sends its replay, then the held messages. */
  #resumed(connection: WsConnection<S>, outcome: ResumeOutcome): void {
    const { id } = connection;
    try {
      this.#options.onResume?.(connection, {
        resumed: outcome.resumed,
        since: outcome.since,
        groups: outcome.groups,
        removed: outcome.removed,
      });
    } catch (error) {
      this.#onError(error);
    }
    for (const [group, reason] of outcome.joins) this.#groups.join(id, group, reason);
    this.#groups.sendAll(id, this.#frames(outcome.messages));
  }

  #deliverHere(target: BroadcastTarget, frame: Buffer): void {
    if ("group" in target) this.#groups.broadcast(target.group, frame);
    else for (const id of this.#sync.connectionsOf(target.userId)) this.send(id, frame);
  }

  /**
   * Hands a connection's messages to `handshake` until it completes, within the timeout. `feed`
   * returns false once the handshake is done: later messages are the connection's to handle.
   * Messages fed while a handshake was pending, after the one that completed it, go to
   * `overflow`, in order, before any later one can arrive (they run in the same microtasks).
   */
  #opening(
    connection: WsConnection<S>,
    handshake: NonNullable<WsBindingOptions<S>["handshake"]>,
    overflow: (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean) => void,
  ): {
    feed: (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean) => boolean;
    done: Promise<Buffer | undefined>;
  } {
    let open = true;
    let feed: (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean) => boolean = () => false;
    const done = new Promise<Buffer | undefined>((resolve, reject) => {
      const finish = (outcome: () => void) => {
        open = false;
        clearTimeout(timer);
        outcome();
      };
      const timer = setTimeout(
        () => finish(() => reject(new Error(HANDSHAKE_TIMED_OUT))),
        this.#options.handshakeTimeoutMs ?? 15_000,
      );
      connection.socket.on("close", () => clearTimeout(timer));
      // One piece at a time: a handshake that resolves asynchronously sees its pieces in order.
      let pieces = Promise.resolve();
      feed = (data, isBinary) => {
        if (!open) return false;
        pieces = pieces.then(async () => {
          if (!open) return overflow(data, isBinary);
          try {
            const rest = await handshake(connection, toBuffer(data), isBinary);
            if (rest !== false) finish(() => resolve(rest));
          } catch (error) {
            finish(() => reject(error));
          }
        });
        return true;
      };
    });
    return { feed: (data, isBinary) => feed(data, isBinary), done };
  }

  async #connected(socket: S, request: IncomingMessage): Promise<void> {
    // Upgrades that did not come through handleUpgrade (a server ws listens on itself) are
    // authenticated here, after the fact: closed with 1008.
    let who = this.#principals.get(request);
    if (who === undefined) {
      try {
        who = normalize(await this.#options.userIdOf(request));
      } catch (error) {
        if (!(error instanceof WsRefusal)) this.#onError(error);
        return socket.close(1008, error instanceof WsRefusal ? error.message : "unauthorized");
      }
      if (who === undefined) return socket.close(1008, "unauthorized");
    }
    const connection: WsConnection<S> = {
      id: who.connectionId ?? randomUUID(),
      userId: who.userId,
      socket,
      request,
    };
    const end = (code: number, reason: string) =>
      this.#options.close
        ? this.#options.close(connection, code, reason)
        : socket.close(code, reason);
    const { id } = connection;
    this.#connections.set(id, connection);
    this.#held.set(id, []);
    this.#groups.add(id, socket);
    const expiry =
      who.expiresAt === undefined
        ? undefined
        : setTimeout(
            () => end(4401, "token expired"),
            Math.min(Math.max(0, who.expiresAt - Date.now()), MAX_TIMER),
          );
    // One small record a connection (idle connections are most of them): what the heartbeat
    // needs, set by the pong listener and the message listener below.
    const beat = { socket, heard: true };
    socket.on("pong", () => {
      beat.heard = true;
    });
    this.#beats.set(id, beat);
    socket.on("close", () => {
      this.#beats.delete(id);
      this.#resumes?.cancel(id);
      clearTimeout(expiry);
      this.#held.delete(id);
      this.#connections.delete(id);
      const groups = this.#sync.groupsOfConnection(id);
      this.#sync.disconnect(id);
      this.#groups.remove(id, groups);
      this.#options.onClose?.(connection);
    });
    // ws reports only what the client did wrong here (a frame too large, invalid UTF-8, ...).
    socket.on("error", (error) => this.#options.onClientError?.(connection, error));
    const { userId } = who;
    // `onConnection` runs in the turn the groups are joined, before them: its welcome is the
    // first thing the client gets, ahead of any group's message.
    const ready = (groups: string[]) => {
      try {
        this.#options.onConnection?.(connection, groups);
      } catch (error) {
        this.#onError(error);
      }
      this.#groups.sendAll(id, this.#held.get(id) ?? []);
      this.#held.delete(id);
    };
    const positions = this.#resumes && this.#options.resumeOf?.(request);
    const resumes = this.#resumes;
    resumes?.begin(id, userId, positions);
    const connect = () =>
      this.#sync
        .connect(id, userId, ready)
        .then(async (groups) => {
          await resumes?.finish(id, (outcome) => this.#resumed(connection, outcome));
          return groups;
        })
        .catch((error: unknown) => {
          this.#onError(error);
          end(1011, "membership store unavailable");
        });
    // Messages are handled one at a time, in order, and only once the groups are rehydrated
    // (and the protocol's handshake, if any, is done).
    const handle = (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean) =>
      socket.readyState === OPEN
        ? this.#options.onMessage?.(connection, data, isBinary)
        : undefined;
    const opening =
      this.#options.handshake &&
      this.#opening(connection, this.#options.handshake, (data, isBinary) =>
        receive(data, isBinary),
      );
    let queue: Promise<unknown> =
      opening === undefined
        ? connect()
        : opening.done.then(
            async (rest) => {
              const groups = await connect();
              if (groups !== undefined && rest !== undefined && rest.length > 0)
                await handle(rest, false);
            },
            (error: unknown) => {
              const failure = error instanceof Error ? error : new Error(String(error));
              this.#options.onClientError?.(connection, failure);
              end(1002, failure.message);
            },
          );
    // Fair reading: past maxQueuedMessages waiting, stop reading until the queue has drained.
    const maxQueued = this.#options.maxQueuedMessages ?? 16;
    let queued = 0;
    let paused = false;
    const receive = (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean) => {
      if (++queued > maxQueued && !paused) {
        paused = true;
        socket.pause?.();
      }
      queue = queue
        .then(() => handle(data, isBinary))
        .catch((error: unknown) => this.#onError(error))
        .finally(() => {
          if (--queued === 0 && paused) {
            paused = false;
            socket.resume?.();
          }
        });
    };
    socket.on("message", (data, isBinary) => {
      beat.heard = true;
      if (!opening?.feed(data, isBinary)) receive(data, isBinary);
    });
  }
}

/** See {@link WsHub}. */
export function bindWs<S extends BoundSocket>(
  wss: BoundServer<S>,
  options: WsBindingOptions<S>,
): WsHub<S> {
  if (typeof options?.userIdOf !== "function") {
    throw new MembershipError("INVALID_ARGUMENT", "bindWs needs userIdOf(request)");
  }
  return new WsHub(wss, options);
}

function normalize(
  principal: WsPrincipal | undefined,
): { userId: string; expiresAt?: number; connectionId?: string } | undefined {
  if (principal === undefined) return undefined;
  if (typeof principal === "string") return { userId: principal };
  const { userId, expiresAt, connectionId } = principal;
  return {
    userId,
    ...(expiresAt !== undefined && {
      expiresAt: typeof expiresAt === "number" ? expiresAt : expiresAt.getTime(),
    }),
    ...(connectionId !== undefined && { connectionId }),
  };
}
