import { randomBytes } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import { type AddToGroupOptions, MembershipError, type MembershipStore } from "../contract.js";
import type { MessageHistory } from "../history/history.js";
import type { Presence, PresenceEvent, PresenceView } from "../presence/presence.js";
import type { JoinReason, LeaveReason } from "../sync/membership-sync.js";
import { HttpSocket } from "../transports/http-socket.js";
import { type LongPollingOptions, LongPollingSocket } from "../transports/long-polling.js";
import { ServerSentEventsSocket } from "../transports/server-sent-events.js";
import { refuseUpgrade, requestTarget, respond } from "./http.js";
import {
  fromMessagePack,
  type HubMessage,
  splitMessagePack,
  toMessagePack,
  transcoder,
} from "./signalr-msgpack.js";
import { ReplayableConnection } from "./signalr-reconnect.js";
import { ClientResults } from "./signalr-results.js";
import { HIGH_WATER, isStream, Streams } from "./signalr-streams.js";
import {
  type BoundServer,
  type BoundSocket,
  bindWs,
  HANDSHAKE_TIMED_OUT,
  type ServerBus,
  type WsBindingOptions,
  type WsConnection,
  type WsHub,
  type WsPrincipal,
  WsRefusal,
} from "./ws.js";
import { toBuffer } from "./ws-groups.js";

/** The JSON hub protocol's record separator: every message ends with it. */
const RS = 0x1e;
const INVOCATION = 1;
const STREAM_ITEM = 2;
const COMPLETION = 3;
const STREAM_INVOCATION = 4;
const CANCEL_INVOCATION = 5;
const PING = 6;
const CLOSE = 7;
const ACK = 8;
const SEQUENCE = 9;
const NEGOTIATED_TTL_MS = 30_000;
/** An HTTP transport's connection is still known this long after it ended: its last poll gets 204. */
const ENDED_TTL_MS = 5_000;
const HTTP_REFUSAL_DELAY_MS = 50;
/** Negotiate carries no body; anything past this is refused unread (413). */
const MAX_NEGOTIATE_BODY_BYTES = 4096;
/** Frames a handshake may come in before it is refused: clients send it in one. */
const MAX_HANDSHAKE_PIECES = 64;
/** ASP.NET Core's answer to a handshake that timed out or outgrew the message limit. */
const HANDSHAKE_CANCELED = "Handshake was canceled.";

const record = (message: object) => Buffer.from(`${JSON.stringify(message)}\u001e`);
const HANDSHAKE_OK = record({});
const PING_FRAME = record({ type: PING });

/**
 * Thrown by a hub method to fail the client's invocation with this message (its `invoke`
 * rejects with it). Any other error is reported to `onError` and the client gets a generic one.
 */
export class HubError extends Error {}

/** A client broke the hub protocol: reported to `onClientError`, never to `onError`. */
export class HubProtocolError extends Error {}

/** The transports of `TransportProtocols.md`, as negotiate names them. */
export type SignalRTransport = "WebSockets" | "ServerSentEvents" | "LongPolling";
const TRANSPORTS: readonly SignalRTransport[] = ["WebSockets", "ServerSentEvents", "LongPolling"];

/**
 * A connection of {@link bindSignalR}: the SignalR connection id, its user, its socket. Over
 * Server-Sent Events and long polling, `socket` is a stand-in with a WebSocket's `send`, `close`,
 * `terminate`, `readyState` and `bufferedAmount` (an {@link HttpSocket}), not a `ws` WebSocket.
 */
export type SignalRConnection<S extends BoundSocket> = WsConnection<S>;

/** A method clients may invoke: its result (or `null`) completes their `invoke`. */
export type HubMethod<S extends BoundSocket> = (
  connection: SignalRConnection<S>,
  ...args: unknown[]
) => unknown;

/** An invocation as a {@link SignalRBindingOptions.filter} sees it. */
export interface HubInvocation<S extends BoundSocket> {
  readonly connection: SignalRConnection<S>;
  readonly target: string;
  readonly arguments: readonly unknown[];
  /** The invocation's size on the wire, in bytes. */
  readonly size: number;
}

export interface SignalRBindingOptions<S extends BoundSocket> {
  store: MembershipStore;
  /** The hub's path, e.g. `/signalr`: negotiate is `POST <path>/negotiate`, the socket `<path>`. */
  path: string;
  /**
   * Who a request acts for, from the access token the client sends (`accessTokenFactory`: the
   * `Authorization: Bearer` header on negotiate and from Node and .NET clients, the
   * `access_token` query parameter on a browser's WebSocket). Called for negotiate and again for
   * the WebSocket. `undefined` answers 401, a {@link WsRefusal} its status, before any socket.
   * With `expiresAt`, the connection is closed with an error saying so when it passes.
   */
  userIdOf(request: IncomingMessage): WsPrincipal | undefined | Promise<WsPrincipal | undefined>;
  /**
   * The methods clients invoke, by name (matched case-insensitively, as ASP.NET Core does). A
   * method takes exactly the arguments it declares after the connection (its `length` less
   * one, as ASP.NET Core binds a method's parameters): an invocation with more or fewer fails
   * with an error completion. Default values and rest parameters are not counted by JavaScript,
   * so leave them out. A client's upload streams (`streamIds`) come after the arguments, in the
   * order of their ids, each an async iterable of its items; the connection is not read while
   * 10 items wait for the method (backpressure), and an upload ends with the client's completion
   * (or throws its error, or the connection's close).
   */
  methods: Record<string, HubMethod<S>>;
  /**
   * Methods clients stream from (`connection.stream(...)`), by name as `methods`: each returns an
   * async iterable (an `async function*`, say), whose items the client receives as they come,
   * then the stream's completion (its error if it throws: a {@link HubError}'s message, else a
   * generic one). The next item is taken only while the connection's unsent bytes are under
   * 64 KiB, so a slow reader does not grow the server's memory; the client's cancel (its
   * subscription's `dispose()`) and the connection's close end it (`return()` on the iterator).
   * A streaming invocation of a method of `methods`, or the other way round, fails without
   * running it. At most 16 streams per connection, both ways.
   */
  streams?: Record<string, HubMethod<S>>;
  /**
   * Runs for every message a client sends, whatever its type (pings, completions, stream items
   * and the ones this server ignores included), before it is read: the place for rate limits.
   * Throw a {@link HubError} to refuse it: an invocation's completion carries the error, any
   * other message is dropped. Close the connection from here to end a flood.
   */
  admit?: (connection: SignalRConnection<S>, bytes: number) => void | Promise<void>;
  /**
   * Runs around every invocation (as ASP.NET Core's hub filters do, and also for unknown
   * methods, whose `next` fails): call `next` to invoke it, or throw a {@link HubError} to refuse
   * it (a rate limit, say).
   */
  filter?: (invocation: HubInvocation<S>, next: () => Promise<unknown>) => Promise<unknown>;
  /**
   * The handshake is done and the connection is in its stored groups (`groups`, sorted): invoke
   * your welcome here. It reaches the client before any group's message.
   */
  onConnection?: (connection: SignalRConnection<S>, groups: string[]) => void;
  onJoin?: (
    connection: SignalRConnection<S>,
    group: string,
    reason: JoinReason | undefined,
  ) => void;
  onLeave?: (
    connection: SignalRConnection<S>,
    group: string,
    reason: LeaveReason | undefined,
  ) => void;
  onClose?: (connection: SignalRConnection<S>) => void;
  onSlowConsumer?: (connection: SignalRConnection<S>) => void;
  /**
   * The transports negotiate offers and the path serves, as ASP.NET Core's
   * `HttpConnectionDispatcherOptions.Transports`. Default all three. Server-Sent Events and long
   * polling need the negotiate step and, behind a load balancer, sticky sessions: a connection's
   * requests must reach the server that holds it (any other answers 404).
   */
  transports?: readonly SignalRTransport[];
  /** Long polling's timeouts: see {@link LongPollingOptions}. */
  longPolling?: LongPollingOptions;
  /** How often the server pings each client. Default 15 s (ASP.NET Core's KeepAliveInterval). */
  keepAliveIntervalMs?: number;
  /** Silence from a client after which it is closed. Default 30 s (ClientTimeoutInterval). */
  clientTimeoutMs?: number;
  /**
   * Negotiations whose WebSocket has not come yet (each is kept 30 s), per user and in all:
   * past them negotiate answers 429 and 503 with `Retry-After`. Defaults 20 and 10,000: filling
   * every place takes 500 users' tokens.
   */
  maxPendingNegotiationsPerUser?: number;
  maxPendingNegotiations?: number;
  /** Time a client has to send its handshake. Default 15 s. */
  handshakeTimeoutMs?: number;
  /**
   * Largest message a client may send. Default 32 KiB (MaximumReceiveMessageSize). The
   * `WebSocketServer`'s `maxPayload` is lowered to it (plus the separator): a frame larger than
   * that closes the connection with 1009 before it is buffered; a message that grows past it
   * over several frames, with a close message.
   */
  maxMessageBytes?: number;
  /**
   * Send the details of failures to clients, as ASP.NET Core's `EnableDetailedErrors`: the
   * exception's name and message after a failed invocation's or a close's generic text. Off by
   * default: they may tell a client more about the server than it should know.
   */
  detailedErrors?: boolean;
  /** See {@link WsBindingOptions}. */
  maxBufferedBytes?: number;
  maxQueuedMessages?: number;
  /**
   * Stateful reconnect (the official clients' `withStatefulReconnect()`): negotiate offers it to
   * clients that ask, the handshake takes JSON protocol version 2, and a connection whose
   * WebSocket drops without a close stays (in its groups, keeping what it is sent) for
   * `windowMs` (default 15 s), so the client's new WebSocket carries on with no message lost or
   * repeated (`Ack` and `Sequence`), up to `bufferBytes` (default 100,000, ASP.NET Core's) not yet
   * acked; past that, or after the window, the client starts a new connection. Off by default,
   * as in ASP.NET Core (`AllowStatefulReconnects`).
   */
  statefulReconnect?: boolean | { windowMs?: number; bufferBytes?: number };
  /** Messages to and from other servers' SignalR connections (its own channel). */
  bus?: ServerBus;
  /**
   * Group messages kept in a history, and replayed to a client that reconnects with the
   * positions of `resumeOf` (from the negotiate and WebSocket URLs: a client sets them on its
   * URL before it reconnects): as {@link WsBindingOptions.history}. `renderMessage` makes each
   * message an invocation (see `invocation`); `onResume` is where to tell the client.
   */
  history?: MessageHistory;
  renderMessage?: WsBindingOptions<S>["renderMessage"];
  resumeOf?: WsBindingOptions<S>["resumeOf"];
  onResume?: WsBindingOptions<S>["onResume"];
  /** Who is connected in each group: as {@link WsBindingOptions.presence}. */
  presence?: Presence;
  /**
   * With `presence`: the client method invoked with `{ group, userId, online }` on a group's
   * connections here when a user comes online in it or goes. Default: none is.
   */
  presenceTarget?: string;
  /** Failures of the server (a hub method's error, `userIdOf` failing). Default: a warning. */
  onError?: (error: unknown) => void;
  /**
   * A client broke the protocol (a malformed handshake or message, one too large): its
   * connection is being closed with an error. The place to log it, at warn, with its user.
   */
  onClientError?: (connection: SignalRConnection<S>, error: Error) => void;
}

interface State<S extends BoundSocket> {
  readonly connection: SignalRConnection<S>;
  handshaken: boolean;
  /** The hub protocol the handshake chose. */
  protocol: "json" | "messagepack";
  /**
   * The frames of a message (or the handshake) whose separator has not come yet: joined once it
   * does, not copied again with every frame.
   */
  pending: Buffer[];
  pendingBytes: number;
  /** MessagePack: the bytes the held message needs in all, once its length has come. */
  need: number;
  lastReceived: number;
  lastPing: number;
  /** Lets the connection be read on while its current invocation waits for the client. */
  waiting?: (() => void) | undefined;
}

/**
 * A hub for ASP.NET Core SignalR clients (`@microsoft/signalr`, the .NET, Java and Swift
 * clients) with durable groups: the negotiate endpoint, the WebSockets transport and the JSON
 * hub protocol of `HubProtocol.md` and `TransportProtocols.md`, on `ws`, over {@link WsHub}.
 * Call `handleRequest` from your HTTP server's `request` event and `handleUpgrade` from its
 * `upgrade` event for the hub's path (the `WebSocketServer` made with `noServer: true`).
 */
export class SignalRHub<S extends BoundSocket> {
  readonly #options: SignalRBindingOptions<S>;
  readonly #hub: WsHub<S>;
  readonly #methods: Map<string, HubMethod<S>>;
  readonly #streamMethods: Map<string, HubMethod<S>>;
  readonly #negotiated = new Map<
    string,
    { connectionId: string; userId: string; used: boolean; stateful: boolean }
  >();
  /** Stateful connections by id, and their connection token's connection id. */
  readonly #replays = new Map<string, ReplayableConnection<S>>();
  readonly #tokens = new Map<string, { connectionId: string; userId: string }>();
  /** Upgrades that start a stateful connection, or take one over. */
  readonly #upgrades = new WeakMap<
    IncomingMessage,
    { token: string } | { replay: ReplayableConnection<S>; connectionId: string }
  >();
  readonly #stateful: { windowMs: number; bufferBytes: number } | undefined;
  /** Negotiations whose socket has not come yet, by user: each holds memory for 30 s. */
  readonly #pending = new Map<string, number>();
  #pendingTotal = 0;
  readonly #transports: ReadonlySet<SignalRTransport>;
  /** Server-Sent Events and long-polling connections, by connection token, and their user. */
  readonly #http = new Map<string, { socket: HttpSocket; userId: string }>();
  /** Requests authenticated before they became a connection (an HTTP transport's first GET). */
  readonly #accepted = new WeakMap<IncomingMessage, WsPrincipal>();
  readonly #wss: BoundServer<S>;
  readonly #states = new Map<string, State<S>>();
  /** Group messages and invocations, framed in JSON, as MessagePack: once for all connections. */
  readonly #transcode = transcoder();
  readonly #results = new ClientResults((message) => new HubError(message));
  readonly #streams = new Streams((message) => new HubError(message));
  readonly #onError: (error: unknown) => void;
  readonly #maxMessageBytes: number;
  readonly #sweep: NodeJS.Timeout;

  constructor(wss: BoundServer<S>, options: SignalRBindingOptions<S>) {
    this.#options = options;
    this.#onError =
      options.onError ??
      ((error) => process.emitWarning(`hub-membership: bindSignalR: ${String(error)}`));
    const byName = (methods: Record<string, HubMethod<S>> = {}) =>
      new Map(Object.entries(methods).map(([name, method]) => [name.toLowerCase(), method]));
    this.#methods = byName(options.methods);
    this.#streamMethods = byName(options.streams);
    this.#maxMessageBytes = options.maxMessageBytes ?? 32 * 1024;
    this.#transports = new Set(options.transports ?? TRANSPORTS);
    this.#wss = wss;
    const stateful = options.statefulReconnect;
    this.#stateful = stateful
      ? {
          windowMs: (stateful === true ? undefined : stateful.windowMs) ?? 15_000,
          bufferBytes: (stateful === true ? undefined : stateful.bufferBytes) ?? 100_000,
        }
      : undefined;
    const { onJoin, onLeave, onSlowConsumer } = options;
    this.#hub = bindWs(this.#server(wss), {
      store: options.store,
      userIdOf: (request) => this.#authenticate(request),
      maxMessageBytes: this.#maxMessageBytes + 1,
      heartbeatMs: 0, // the protocol's own pings and client timeout below
      handshake: (connection, data) => this.#handshake(connection, data),
      ...(options.handshakeTimeoutMs !== undefined && {
        handshakeTimeoutMs: options.handshakeTimeoutMs,
      }),
      close: (connection, _code, reason) =>
        this.#end(connection, reason === HANDSHAKE_TIMED_OUT ? HANDSHAKE_CANCELED : reason, true),
      onConnection: (connection, groups) => {
        const state = this.#states.get(connection.id);
        if (state === undefined) return;
        state.handshaken = true;
        if (state.protocol === "json") this.#hub.send(connection.id, HANDSHAKE_OK);
        else {
          // The answer is JSON whatever the protocol: it goes first, as it is, then all is encoded.
          connection.socket.send(HANDSHAKE_OK, { binary: false });
          this.#hub.encode(connection.id, this.#transcode);
        }
        options.onConnection?.(connection, groups);
      },
      onMessage: (connection, data) => this.#receive(connection, toBuffer(data)),
      onClose: (connection) => {
        this.#states.delete(connection.id);
        this.#results.gone(connection.id);
        this.#streams.gone(connection.id);
        options.onClose?.(connection);
      },
      ...(onJoin && { onJoin }),
      ...(onLeave && { onLeave }),
      ...(onSlowConsumer && { onSlowConsumer }),
      ...(options.maxBufferedBytes !== undefined && { maxBufferedBytes: options.maxBufferedBytes }),
      ...(options.maxQueuedMessages !== undefined && {
        maxQueuedMessages: options.maxQueuedMessages,
      }),
      ...(options.bus && { bus: options.bus }),
      ...(options.history && { history: options.history }),
      ...(options.renderMessage && { renderMessage: options.renderMessage }),
      ...(options.resumeOf && { resumeOf: options.resumeOf }),
      ...(options.onResume && { onResume: options.onResume }),
      ...(options.presence && { presence: options.presence }),
      ...(options.presenceTarget !== undefined && {
        renderPresence: (event: PresenceEvent) =>
          invocation(options.presenceTarget as string, [event]),
      }),
      ...(options.onClientError && { onClientError: options.onClientError }),
      onError: this.#onError,
    });
    const keepAlive = options.keepAliveIntervalMs ?? 15_000;
    const timeout = options.clientTimeoutMs ?? 30_000;
    // One timer for every connection: pings the quiet ones, closes the silent ones.
    this.#sweep = setInterval(
      () => {
        const now = Date.now();
        for (const state of this.#states.values()) {
          // Long polling keeps itself alive: its polls are the sign of life, and carry no pings.
          if (!state.handshaken || state.connection.socket instanceof LongPollingSocket) continue;
          const replay = this.#replays.get(state.connection.id);
          if (replay !== undefined) {
            if (!replay.attached) continue; // its window decides
            if (replay.received > replay.acked) {
              replay.acked = replay.received;
              this.#reply(state.connection.id, { type: ACK, sequenceId: replay.acked });
            }
          }
          if (now - state.lastReceived > timeout) {
            this.#end(
              state.connection,
              "Server timeout elapsed without receiving a message from the client.",
              true,
            );
          } else if (now - state.lastPing >= keepAlive) {
            state.lastPing = now;
            this.#hub.send(state.connection.id, PING_FRAME);
          }
        }
      },
      Math.max(10, Math.min(keepAlive, timeout, 4_000) / 4),
    );
    this.#sweep.unref();
  }

  /** Resolves once the bus (if any) delivers other servers' messages. */
  ready(): Promise<unknown> {
    return this.#hub.ready();
  }

  /**
   * Answers every request: `POST <path>/negotiate` (a connection id and token, WebSockets as the
   * only transport; 401 for a request `userIdOf` refuses, with no body, as ASP.NET Core), and
   * under `<path>` what ASP.NET Core answers for a transport it does not offer. A request for any
   * other path goes to `next` if you give one (your own routes), else is answered 404. The path
   * is matched ignoring case, as ASP.NET Core's routing does. Never rejects, unless `next` does.
   */
  async handleRequest(
    request: IncomingMessage,
    response: ServerResponse,
    next?: () => unknown,
  ): Promise<void> {
    const url = requestTarget(request);
    if (url === undefined) return respond(response, 400, "Bad Request", { connection: "close" });
    const path = url.pathname.toLowerCase();
    const hub = this.#options.path.toLowerCase();
    if (path === `${hub}/negotiate`) return this.#negotiate(request, response, url);
    if (path === hub) return this.#otherTransport(request, response, url);
    if (next === undefined) return respond(response, 404, "Not Found");
    await next();
  }

  async #negotiate(request: IncomingMessage, response: ServerResponse, url: URL): Promise<void> {
    if (!discardBody(request, response)) return;
    if (request.method !== "POST") return respond(response, 405, undefined, { Allow: "POST" });
    const requested = url.searchParams.get("negotiateVersion") ?? "0";
    if (!/^\d{1,9}$/.test(requested))
      return respond(response, 400, {
        error: "The client requested a non-integer protocol version.",
      });
    const principal = await this.#principal(request, response);
    if (principal === undefined) return;
    const version = Number(requested) >= 1 ? 1 : 0;
    const connectionId = randomBytes(16).toString("base64url");
    const token = version === 0 ? connectionId : randomBytes(16).toString("base64url");
    const userId = typeof principal === "string" ? principal : principal.userId;
    const pending = this.#pending.get(userId) ?? 0;
    const retry = { "Retry-After": String(NEGOTIATED_TTL_MS / 1000) };
    if (pending >= (this.#options.maxPendingNegotiationsPerUser ?? 20))
      return respond(response, 429, { error: "Too many pending negotiations." }, retry);
    if (this.#pendingTotal >= (this.#options.maxPendingNegotiations ?? 10_000))
      return respond(response, 503, { error: "Too many pending negotiations." }, retry);
    this.#pending.set(userId, pending + 1);
    this.#pendingTotal++;
    const stateful =
      this.#stateful !== undefined &&
      version === 1 &&
      url.searchParams.get("useStatefulReconnect") === "true";
    const entry = { connectionId, userId, used: false, stateful };
    this.#negotiated.set(token, entry);
    setTimeout(() => {
      this.#negotiated.delete(token);
      if (!entry.used) this.#settle(userId);
    }, NEGOTIATED_TTL_MS).unref();
    respond(response, 200, {
      connectionId,
      ...(version === 1 && { connectionToken: token }),
      negotiateVersion: version,
      ...(stateful && { useStatefulReconnect: true }),
      availableTransports: [...this.#transports].map((transport) => ({
        transport,
        transferFormats: transport === "ServerSentEvents" ? ["Text"] : ["Text", "Binary"],
      })),
    });
  }

  /** Who a request acts for; `undefined` once it answered it (401, a refusal, 500). */
  async #principal(
    request: IncomingMessage,
    response: ServerResponse,
  ): Promise<WsPrincipal | undefined> {
    try {
      const principal = await this.#options.userIdOf(request);
      if (principal === undefined) respond(response, 401);
      return principal;
    } catch (error) {
      if (error instanceof WsRefusal)
        respond(response, error.status, { error: error.message }, error.headers);
      else {
        this.#onError(error);
        respond(response, 500, { error: "Internal Server Error" });
      }
      return undefined;
    }
  }

  /**
   * A request to the hub's path that is not a WebSocket: Server-Sent Events or long polling (a
   * GET), the client's messages (a POST), or its goodbye (a DELETE), each authenticated again and
   * refused (403) for any user but the connection's.
   */
  async #otherTransport(request: IncomingMessage, response: ServerResponse, url: URL) {
    const { method } = request;
    const id = url.searchParams.get("id");
    const sending = method === "POST" && id !== null && this.#http.has(id);
    if (!sending && !discardBody(request, response)) return;
    if (method !== "GET" && method !== "POST" && method !== "DELETE")
      return respond(response, 405, undefined, { Allow: "GET, POST, DELETE" });
    if (!id) return respond(response, 400, "Connection ID required");
    const sse = method === "GET" && /text\/event-stream/i.test(request.headers.accept ?? "");
    const transport = sse ? "ServerSentEvents" : "LongPolling";
    // POSTs and DELETEs serve both: a connection they name exists only on a transport offered.
    if (method === "GET" && !this.#transports.has(transport))
      return respond(response, 404, `${transport} transport not supported by this end point type`);
    const principal = await this.#principal(request, response);
    if (principal === undefined) return;
    const userId = typeof principal === "string" ? principal : principal.userId;
    const open = this.#http.get(id);
    if (open !== undefined) {
      // Another user's token is as unknown as a made-up one (no telling live tokens apart).
      if (open.userId !== userId) {
        request.resume();
        return respond(response, 404, "No Connection with that ID");
      }
      const { socket } = open;
      if (method === "POST")
        return socket.post(
          request,
          response,
          /octet-stream/i.test(request.headers["content-type"] ?? ""),
        );
      if (method === "DELETE") {
        socket.close();
        return respond(response, 202, "");
      }
      if (sse !== socket instanceof ServerSentEventsSocket)
        return respond(response, 400, "Cannot change transports mid-connection");
      if (socket instanceof LongPollingSocket) return socket.poll(response);
      return respond(response, 409, "Conflict");
    }
    if (method !== "GET") return respond(response, 404, "No Connection with that ID");
    let connectionId: string;
    try {
      ({ connectionId } = this.#claim(id, userId));
    } catch (error) {
      const { status, message } = error as WsRefusal;
      return respond(response, status, message);
    }
    const socket = sse
      ? new ServerSentEventsSocket(response)
      : new LongPollingSocket(this.#options.longPolling);
    this.#http.set(id, { socket, userId });
    socket.on("close", () => {
      setTimeout(() => this.#http.delete(id), ENDED_TTL_MS).unref();
    });
    this.#accepted.set(
      request,
      typeof principal === "string" ? { userId, connectionId } : { ...principal, connectionId },
    );
    this.#wss.emit("connection", socket as unknown as S, request);
    // The first poll only starts the connection: it is answered at once, empty (as ASP.NET Core).
    if (!sse) respond(response, 200, "");
  }

  /**
   * Authenticates a WebSocket upgrade to `<path>` (with the `id` a negotiate gave, or none when
   * the client skipped negotiation) and completes it: 401 before any socket for a request
   * `userIdOf` refuses, 404 for an unknown `id`, 409 for one already used.
   */
  async handleUpgrade(request: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    if (!this.#transports.has("WebSockets"))
      return refuseUpgrade(
        socket,
        404,
        "WebSockets transport not supported by this end point type",
      );
    return this.#hub.handleUpgrade(request, socket, head);
  }

  /** Invokes `target` on one connection here; false if it is not here. */
  send(connectionId: string, target: string, ...args: unknown[]): boolean {
    return this.#hub.send(connectionId, invocation(target, args));
  }

  /**
   * Invokes `target` on one connection here and resolves to what the client's handler returned
   * (ASP.NET Core's client results: `Clients.Client(id).InvokeAsync`).
   * @throws HubError with the client's error (a handler that threw, or none registered: "Client
   * didn't provide a result."), when the connection is not here or goes before it answers, or
   * after `timeoutMs` (default 30 s) without an answer.
   */
  async invokeClient(
    connectionId: string,
    target: string,
    args: readonly unknown[] = [],
    { timeoutMs = 30_000 }: { timeoutMs?: number } = {},
  ): Promise<unknown> {
    if (!this.#states.get(connectionId)?.handshaken)
      throw new HubError(`Connection '${connectionId}' is not connected to this server.`);
    const { invocationId, result } = this.#results.start(connectionId, timeoutMs);
    // Asked from the connection's own invocation: its answer comes in a later message.
    this.#states.get(connectionId)?.waiting?.();
    this.#reply(connectionId, { type: INVOCATION, invocationId, target, arguments: args });
    return result;
  }

  /**
   * Invokes `target` on every connection in `group`, here and through the bus (framed once);
   * with a `history`, publishes the invocation there (see `WsHub.broadcast`).
   */
  sendToGroup(group: string, target: string, ...args: unknown[]): Promise<void> {
    return this.#hub.broadcast(group, invocation(target, args));
  }

  /** Invokes `target` on every connection of `userId`, here and through the bus. */
  sendToUser(userId: string, target: string, ...args: unknown[]): Promise<void> {
    return this.#hub.sendToUser(userId, invocation(target, args));
  }

  /** Closes a connection here with a close message carrying `error`. */
  closeConnection(connectionId: string, error?: string, allowReconnect = false): void {
    const state = this.#states.get(connectionId);
    if (state !== undefined) this.#end(state.connection, error, allowReconnect);
  }

  grant(userId: string, group: string, options?: AddToGroupOptions): Promise<void> {
    return this.#hub.grant(userId, group, options);
  }

  revoke(userId: string, group: string, reason?: "revoked" | "left"): Promise<boolean> {
    return this.#hub.revoke(userId, group, reason);
  }

  isInGroup(connectionId: string, group: string): boolean {
    return this.#hub.isInGroup(connectionId, group);
  }

  connectionsOf(userId: string): string[] {
    return this.#hub.connectionsOf(userId);
  }

  groupsOfConnection(connectionId: string): string[] {
    return this.#hub.groupsOfConnection(connectionId);
  }

  /** Who is connected in each group, with the `presence` option; `undefined` without. */
  get presence(): PresenceView | undefined {
    return this.#hub.presence;
  }

  /** Connections here, and groups with at least one of them: for a gauge. */
  counts(): { connections: number; groups: number } {
    return this.#hub.counts();
  }

  /** Stops pinging and following the store and the bus; the sockets are yours to close. */
  async close(): Promise<void> {
    clearInterval(this.#sweep);
    await this.#hub.close();
  }

  async #authenticate(request: IncomingMessage): Promise<WsPrincipal | undefined> {
    const accepted = this.#accepted.get(request);
    if (accepted !== undefined) return accepted;
    const principal = await this.#options.userIdOf(request);
    if (principal === undefined) return undefined;
    // handleUpgrade refused a request without a target that parses: this one has one.
    const id = requestTarget(request)?.searchParams.get("id") ?? null;
    if (id === null) return principal; // the client skipped negotiation
    const userId = typeof principal === "string" ? principal : principal.userId;
    const withId = (connectionId: string): WsPrincipal =>
      typeof principal === "string" ? { userId, connectionId } : { ...principal, connectionId };
    // A stateful connection's token, again: its new WebSocket takes the connection over.
    const resumed = this.#tokens.get(id);
    if (resumed !== undefined && resumed.userId === userId) {
      const replay = this.#replays.get(resumed.connectionId);
      if (replay?.resumable) {
        this.#upgrades.set(request, { replay, connectionId: resumed.connectionId });
        return withId(resumed.connectionId);
      }
    }
    const { connectionId, stateful } = this.#claim(id, userId);
    if (stateful) this.#upgrades.set(request, { token: id });
    return withId(connectionId);
  }

  /**
   * Takes a negotiation's token for the connection it names: once, and only for the user it was
   * given to (another user's token is as unknown as a made-up one).
   * @throws WsRefusal 404 for an unknown token, 409 for one already used
   */
  #claim(token: string, userId: string): { connectionId: string; stateful: boolean } {
    const negotiated = this.#negotiated.get(token);
    if (negotiated === undefined || negotiated.userId !== userId)
      throw new WsRefusal(404, "No Connection with that ID");
    if (negotiated.used) throw new WsRefusal(409, "Conflict");
    negotiated.used = true;
    this.#settle(userId);
    return negotiated;
  }

  /**
   * The `WebSocketServer` as the hub sees it: a stateful connection's socket is one that outlives
   * its WebSockets, and an upgrade that takes one over is attached to it instead of connecting.
   */
  #server(wss: BoundServer<S>): BoundServer<S> {
    return {
      get options() {
        return wss.options;
      },
      handleUpgrade: (request, socket, head, callback) =>
        wss.handleUpgrade(request, socket, head, callback),
      on: (event, listener) => wss.on(event, listener),
      emit: (event, socket, request) => {
        const upgrade = this.#upgrades.get(request);
        if (upgrade === undefined || this.#stateful === undefined)
          return wss.emit(event, socket, request);
        if ("replay" in upgrade) {
          // It may have ended since the upgrade was authenticated: then this socket has nothing.
          if (!upgrade.replay.resumable) socket.close(1000);
          else
            upgrade.replay.reattach(
              socket,
              (id) => this.#frame(upgrade.connectionId, { type: SEQUENCE, sequenceId: id }),
              this.#states.get(upgrade.connectionId)?.protocol === "messagepack",
            );
          return true;
        }
        const { connectionId, userId } = this.#principalOf(request, upgrade.token);
        const replay = new ReplayableConnection(socket, {
          windowMs: this.#stateful.windowMs,
          maxBytes: this.#stateful.bufferBytes,
          onEnd: () => {
            this.#replays.delete(connectionId);
            this.#tokens.delete(upgrade.token);
          },
        });
        this.#replays.set(connectionId, replay);
        this.#tokens.set(upgrade.token, { connectionId, userId });
        return wss.emit(event, replay.socket, request);
      },
    };
  }

  /** The connection a negotiated token was given to. */
  #principalOf(request: IncomingMessage, token: string): { connectionId: string; userId: string } {
    const negotiated = this.#negotiated.get(token);
    if (negotiated === undefined) throw new Error(`no negotiation for ${request.url}`);
    return negotiated;
  }

  /** A pending negotiation of the user's was used or expired. */
  #settle(userId: string): void {
    this.#pendingTotal--;
    const left = (this.#pending.get(userId) ?? 1) - 1;
    if (left === 0) this.#pending.delete(userId);
    else this.#pending.set(userId, left);
  }

  /** Reads the handshake request, over as many frames as it takes; `false` until it is whole. */
  #handshake(connection: SignalRConnection<S>, data: Buffer): Buffer | undefined | false {
    let state = this.#states.get(connection.id);
    if (state === undefined) {
      const now = Date.now();
      const created: State<S> = {
        connection,
        handshaken: false,
        protocol: "json",
        pending: [],
        pendingBytes: 0,
        need: 0,
        lastReceived: now,
        lastPing: now,
      };
      state = created;
      this.#states.set(connection.id, state);
      // Any message counts as a sign of life, before it waits its turn to be handled.
      connection.socket.on("message", () => {
        created.lastReceived = Date.now();
      });
    }
    const end = data.indexOf(RS);
    if (end < 0) {
      // A handshake in more pieces than any client sends is abuse, whatever their size.
      if (!this.#hold(state, data) || state.pending.length > MAX_HANDSHAKE_PIECES)
        throw new HubProtocolError(HANDSHAKE_CANCELED);
      return false;
    }
    const buffer = this.#joined(state, data);
    const at = buffer.length - (data.length - end);
    if (at > this.#maxMessageBytes) throw new HubProtocolError(HANDSHAKE_CANCELED);
    const request = parseObject(buffer.subarray(0, at));
    const { protocol, version } = request ?? {};
    if (typeof protocol !== "string" || typeof version !== "number")
      throw new HubProtocolError(
        this.#detailed(
          "An unexpected error occurred during connection handshake.",
          "InvalidDataException",
          "The handshake request is not a JSON object with a protocol and a version.",
        ),
      );
    if (protocol !== "json" && protocol !== "messagepack")
      throw new HubProtocolError(`The protocol '${protocol}' is not supported.`);
    // Version 2 is version 1 with Ack and Sequence, which clients send for stateful reconnect.
    if (version !== 1 && version !== 2)
      throw new HubProtocolError(
        `The server does not support version ${version} of the '${protocol}' protocol.`,
      );
    if (protocol === "messagepack" && connection.socket instanceof ServerSentEventsSocket)
      throw new HubProtocolError(
        "Cannot connect with the 'messagepack' protocol over Server-Sent Events: it carries text only.",
      );
    state.protocol = protocol;
    return at + 1 < buffer.length ? buffer.subarray(at + 1) : undefined;
  }

  async #receive(connection: SignalRConnection<S>, data: Buffer): Promise<void> {
    const state = this.#states.get(connection.id);
    // Not handshaken: a refused handshake's connection, waiting to be closed, runs nothing.
    if (state === undefined || !state.handshaken) return;
    if (state.protocol === "messagepack") return this.#receiveMessagePack(state, data);
    if (data.indexOf(RS) < 0) {
      // No message ends in this frame: it waits, and pays all the same, or a flood of frames
      // without a separator would cost the server without ever meeting a limit.
      if (!this.#hold(state, data)) return void this.#tooLarge(connection);
      await this.#admit(connection, data.length);
      return;
    }
    const buffer = this.#joined(state, data);
    let start = 0;
    for (let end = buffer.indexOf(RS); end >= 0; end = buffer.indexOf(RS, start)) {
      const message = buffer.subarray(start, end);
      start = end + 1;
      if (!(await this.#dispatch(connection, message))) return;
    }
    if (buffer.length - start > this.#maxMessageBytes) this.#tooLarge(connection);
    else if (start < buffer.length) this.#hold(state, Buffer.from(buffer.subarray(start)));
  }

  /** As `#receive`, for MessagePack: each message is its length, then that many bytes. */
  async #receiveMessagePack(state: State<S>, data: Buffer): Promise<void> {
    const { connection } = state;
    // A message announced and not complete yet waits unjoined: a drip of 1-byte frames must not
    // copy everything held again with each one.
    if (state.pendingBytes + data.length < state.need) {
      this.#hold(state, data);
      await this.#admit(connection, data.length);
      return;
    }
    const buffer = this.#joined(state, data);
    const { payloads, rest, tooLarge, need } = splitMessagePack(buffer, this.#maxMessageBytes);
    for (const payload of payloads) if (!(await this.#dispatch(connection, payload, true))) return;
    if (tooLarge) return void this.#tooLarge(connection);
    state.need = need ?? 0;
    if (rest.length > 0) this.#hold(state, Buffer.from(rest));
    // A frame with no whole message pays all the same (see #receive).
    if (payloads.length === 0) await this.#admit(connection, data.length);
  }

  /** Keeps a frame until its message's separator comes; false past `maxMessageBytes`. */
  #hold(state: State<S>, data: Buffer): boolean {
    state.pending.push(data);
    state.pendingBytes += data.length;
    return state.pendingBytes <= this.#maxMessageBytes;
  }

  /** What was held, with `data` after it, in one buffer; nothing is held after. */
  #joined(state: State<S>, data: Buffer): Buffer {
    const buffer = state.pending.length === 0 ? data : Buffer.concat([...state.pending, data]);
    state.pending = [];
    state.pendingBytes = 0;
    return buffer;
  }

  /** Handles one message; false when it ended the connection. */
  async #dispatch(
    connection: SignalRConnection<S>,
    data: Buffer,
    messagePack = false,
  ): Promise<boolean> {
    if (data.length > this.#maxMessageBytes) return this.#tooLarge(connection);
    const refusal = await this.#admit(connection, data.length);
    if (connection.socket.readyState !== 1) return false;
    const message = messagePack
      ? fromMessagePack(data)
      : (parseObject(data) ?? "Error reading JSON.");
    if (typeof message === "string") return this.#protocolError(connection, message);
    const { type, invocationId, target, arguments: args, streamIds } = message;
    if (typeof type !== "number")
      return this.#protocolError(connection, "Missing required property 'type'.");
    if (type === CLOSE) {
      connection.socket.close(1000);
      return false;
    }
    const replay = this.#replays.get(connection.id);
    if (replay !== undefined) {
      replay.counting();
      const { sequenceId } = message;
      if (type === ACK && Number.isSafeInteger(sequenceId)) replay.ack(sequenceId as number);
      if (type === SEQUENCE) {
        // The client's next trackable message carries this id; it resends what we did not ack.
        if (!Number.isSafeInteger(sequenceId) || (sequenceId as number) > replay.received + 1)
          return this.#protocolError(
            connection,
            "Sequence ID greater than amount of messages we've received.",
          );
        replay.nextIncoming = sequenceId as number;
      }
      if (type >= INVOCATION && type <= 5) {
        const id = replay.nextIncoming++;
        if (id <= replay.received) return true; // sent again after a reconnect: handled already
        replay.received = id;
      }
    }
    // A client's answer to invokeClient, whatever the admission said: the server asked for it.
    if (type === COMPLETION) {
      if (!this.#results.complete(connection.id, message) && typeof invocationId === "string")
        this.#streams.complete(connection.id, invocationId, message.error);
      return true;
    }
    // A refused item or cancel is dropped, as any refused message.
    if ((type === STREAM_ITEM || type === CANCEL_INVOCATION) && refusal !== undefined) return true;
    // The connection is read again once the upload's reader has room: backpressure.
    if (type === STREAM_ITEM) {
      await this.#streams.item(connection.id, invocationId, message.item, data.length);
      return true;
    }
    if (type === CANCEL_INVOCATION) {
      this.#streams.cancel(connection.id, invocationId);
      return true;
    }
    // Other types are ignored, as ASP.NET Core ignores types it does not know.
    if (type !== INVOCATION && type !== STREAM_INVOCATION) return true;
    if (refusal !== undefined) {
      if (typeof invocationId === "string")
        this.#reply(connection.id, { type: COMPLETION, invocationId, error: refusal.message });
      return true;
    }
    if (typeof target !== "string")
      return this.#protocolError(connection, "Missing required property 'target'.");
    if (!Array.isArray(args))
      return this.#protocolError(connection, "Missing required property 'arguments'.");
    if (invocationId !== undefined && typeof invocationId !== "string")
      return this.#protocolError(connection, "Expected 'invocationId' to be of type String.");
    const complete = (outcome: { result: unknown } | { error: string }) => {
      if (invocationId !== undefined)
        this.#reply(connection.id, { type: COMPLETION, invocationId, ...outcome });
    };
    if (
      streamIds !== undefined &&
      (!Array.isArray(streamIds) || !streamIds.every((id) => typeof id === "string"))
    )
      return this.#protocolError(connection, "Expected 'streamIds' to be of type Array of String.");
    if (type === STREAM_INVOCATION && typeof invocationId !== "string")
      return this.#protocolError(connection, "Missing required property 'invocationId'.");
    const streaming = type === STREAM_INVOCATION;
    if (streaming && this.#streams.isStreaming(connection.id, invocationId as string)) {
      complete({ error: `Invocation ID '${invocationId}' is already in use.` });
      return true;
    }
    let reading: () => void = () => {};
    const waiting = new Promise<void>((resolve) => {
      reading = resolve;
    });
    const ids = (streamIds as string[] | undefined) ?? [];
    const uploads = this.#streams.open(
      connection.id,
      ids,
      streaming,
      (id) => this.#results.isPending(connection.id, id),
      () => reading(),
    );
    if (uploads === undefined) {
      complete({ error: "Too many streams, or a stream id already in use." });
      return true;
    }
    const name = target.toLowerCase();
    const method = (streaming ? this.#streamMethods : this.#methods).get(name);
    // The other kind's method: refused without running it, as ASP.NET Core's binder does.
    const otherKind =
      method === undefined && (streaming ? this.#methods : this.#streamMethods).has(name);
    const failed = `Failed to invoke '${target}' due to an error on the server.`;
    const run = async () => {
      try {
        const next = async () => {
          if (otherKind)
            throw new HubError(
              `The client attempted to invoke the ${streaming ? "non-streaming" : "streaming"} '${target}' method with a ${streaming ? "streaming" : "non-streaming"} invocation.`,
            );
          if (method === undefined)
            throw new HubError(`${failed} HubException: Method does not exist.`);
          const expected = Math.max(0, method.length - 1);
          const given = args.length + uploads.length;
          if (given !== expected)
            throw new HubError(
              this.#detailed(
                failed,
                "InvalidDataException",
                `Invocation provides ${given} argument(s) but target expects ${expected}.`,
              ),
            );
          // Uploads come after the arguments, in the order of their ids.
          return method(connection, ...args, ...uploads);
        };
        const { filter } = this.#options;
        const invocation = { connection, target, arguments: args, size: data.length };
        const result = await (filter ? filter(invocation, next) : next());
        if (!streaming) return complete({ result: result ?? null });
        if (!isStream(result)) throw new Error(`the stream method '${target}' returned no stream`);
        void this.#stream(connection, invocationId as string, result).catch((error: unknown) =>
          this.#onError(error),
        );
      } catch (error) {
        complete({
          error: this.#failure(
            error,
            `An unexpected error occurred invoking '${target}' on the server.`,
          ),
        });
      } finally {
        // Items of an upload sent after its invocation completed are ignored, as the spec allows.
        this.#streams.release(connection.id, ids, uploads);
      }
    };
    // Invocations complete in order, but one that waits for the client (its uploads' items, or
    // a result it asked this connection for: invokeClient) lets the connection be read on.
    const state = this.#states.get(connection.id);
    if (state) state.waiting = () => reading();
    try {
      await Promise.race([run(), waiting]);
    } finally {
      if (state) state.waiting = undefined;
    }
    return true;
  }

  /** A message of the connection's protocol. */
  #frame(connectionId: string, message: HubMessage): Buffer {
    return this.#states.get(connectionId)?.protocol === "messagepack"
      ? toMessagePack(message)
      : record(message);
  }

  /** Sends a message of the hub's own (a completion, a stream item, ...) in the connection's protocol. */
  #reply(connectionId: string, message: HubMessage): boolean {
    return this.#hub.send(connectionId, this.#frame(connectionId, message));
  }

  /**
   * What the client is told of a hub method's failure: a HubError's message; else `generic`
   * (with the failure itself when detailed errors are on), and the failure goes to `onError`.
   */
  #failure(error: unknown, generic: string): string {
    if (error instanceof HubError) return error.message;
    this.#onError(error);
    const failure = error instanceof Error ? error : new Error(String(error));
    return this.#detailed(generic, failure.name, failure.message);
  }

  /** Sends a hub method's stream as the invocation's stream items, then its completion. */
  #stream(connection: SignalRConnection<S>, invocationId: string, source: AsyncIterable<unknown>) {
    const send = (message: HubMessage) => this.#reply(connection.id, message);
    return this.#streams.serve(
      connection.id,
      invocationId,
      source,
      {
        item: (item) => send({ type: STREAM_ITEM, invocationId, item }),
        complete: (error) =>
          send({ type: COMPLETION, invocationId, ...(error !== undefined && { error }) }),
        // With stateful reconnect, what the client has not acked (it acks once a second) counts
        // too: a stream that outran the replay buffer would leave the connection unresumable.
        full: () =>
          connection.socket.bufferedAmount > HIGH_WATER ||
          (this.#replays.get(connection.id)?.unacked ?? 0) >
            (this.#stateful?.bufferBytes ?? Infinity) / 2,
        open: () => this.#states.has(connection.id),
      },
      (error) => this.#failure(error, "An error occurred on the server while streaming results."),
    );
  }

  /** Runs `admit` for a message; the refusal, if it refused it. */
  async #admit(connection: SignalRConnection<S>, bytes: number): Promise<HubError | undefined> {
    const { admit } = this.#options;
    if (admit === undefined) return undefined;
    try {
      await admit(connection, bytes);
      return undefined;
    } catch (error) {
      if (error instanceof HubError) return error;
      this.#onError(error);
      return new HubError("An unexpected error occurred admitting the message.");
    }
  }

  /** `message`, with the failure's name and detail after it when detailed errors are on. */
  #detailed(message: string, name: string, detail: string): string {
    return this.#options.detailedErrors ? `${message} ${name}: ${detail}` : message;
  }

  #tooLarge(connection: SignalRConnection<S>): false {
    return this.#protocolError(
      connection,
      `The maximum message size of ${this.#maxMessageBytes}B was exceeded. ` +
        "The message size can be configured with maxMessageBytes.",
    );
  }

  /** Ends a connection whose client broke the protocol, as ASP.NET Core does. */
  #protocolError(connection: SignalRConnection<S>, detail: string): false {
    this.#options.onClientError?.(connection, new HubProtocolError(detail));
    return this.#end(
      connection,
      this.#detailed("Connection closed with an error.", "InvalidDataException", detail),
      true,
    );
  }

  /**
   * Ends a connection with what its client understands: a handshake answer carrying the error
   * before the handshake is done, a close message after. Returns false (for `#dispatch`).
   */
  #end(
    connection: SignalRConnection<S>,
    error: string | undefined,
    allowReconnect: boolean,
  ): false {
    const { socket } = connection;
    if (socket.readyState !== 1) return false;
    if (this.#states.get(connection.id)?.handshaken) {
      this.#reply(connection.id, { type: CLOSE, error, allowReconnect });
      socket.close(1000);
      return false;
    }
    // Nothing else has been sent to it: the hub holds its messages until the handshake.
    const refuse = () => {
      socket.send(record({ error: error ?? "The connection was closed." }), { binary: false });
      socket.close(1000);
    };
    // Over HTTP, the official client fails with an unhandled rejection when the handshake's
    // refusal arrives before the answer to the POST that carried the handshake: it waits a little.
    if (socket instanceof HttpSocket) setTimeout(refuse, HTTP_REFUSAL_DELAY_MS).unref();
    else refuse();
    return false;
  }
}

/** See {@link SignalRHub}. */
export function bindSignalR<S extends BoundSocket>(
  wss: BoundServer<S>,
  options: SignalRBindingOptions<S>,
): SignalRHub<S> {
  if (typeof options?.userIdOf !== "function")
    throw new MembershipError("INVALID_ARGUMENT", "bindSignalR needs userIdOf(request)");
  if (
    typeof options.path !== "string" ||
    !options.path.startsWith("/") ||
    options.path.endsWith("/")
  )
    throw new MembershipError("INVALID_ARGUMENT", "bindSignalR needs a path like /signalr");
  return new SignalRHub(wss, options);
}

/**
 * The access token a SignalR client sent (its `accessTokenFactory`'s): the `Authorization:
 * Bearer` header (negotiate, Node and .NET clients) or the `access_token` query parameter (a
 * browser's WebSocket, which cannot set headers). Check it yourself in `userIdOf`.
 */
export function accessTokenOf(request: IncomingMessage): string | undefined {
  const header = request.headers.authorization;
  if (header !== undefined) return /^Bearer (\S+)$/i.exec(header)?.[1];
  return requestTarget(request)?.searchParams.get("access_token") ?? undefined;
}

/** A JSON object's properties, or `undefined` for anything else. */
function parseObject(data: Buffer): Record<string, unknown> | undefined {
  let value: unknown;
  try {
    value = JSON.parse(data.toString());
  } catch {
    return undefined;
  }
  return typeof value === "object" && value !== null && !Array.isArray(value)
    ? (value as Record<string, unknown>)
    : undefined;
}

/** An invocation of a client method, as a frame of the JSON hub protocol. */
export function invocation(target: string, args: readonly unknown[]): Buffer {
  return record({ type: INVOCATION, target, arguments: args });
}

/**
 * Drains a request's body without keeping it; a body larger than negotiate ever carries is
 * answered 413 and its connection closed. Returns false when it answered.
 */
function discardBody(request: IncomingMessage, response: ServerResponse): boolean {
  const length = Number(request.headers["content-length"] ?? 0);
  if (!(length <= MAX_NEGOTIATE_BODY_BYTES)) {
    respond(response, 413, "Payload Too Large", { connection: "close" });
    return false;
  }
  let received = 0;
  request.on("data", (chunk: Buffer) => {
    received += chunk.length;
    if (received > MAX_NEGOTIATE_BODY_BYTES) request.destroy();
  });
  request.on("error", () => {});
  request.resume();
  return true;
}
