import { randomBytes } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import { type AddToGroupOptions, MembershipError, type MembershipStore } from "../contract.js";
import type { JoinReason, LeaveReason } from "../sync/membership-sync.js";
import {
  type BoundServer,
  type BoundSocket,
  bindWs,
  type ServerBus,
  type WsConnection,
  type WsHub,
  type WsPrincipal,
  WsRefusal,
} from "./ws.js";
import { toBuffer } from "./ws-groups.js";

/** The JSON hub protocol's record separator: every message ends with it. */
const RS = 0x1e;
const INVOCATION = 1;
const COMPLETION = 3;
const STREAM_INVOCATION = 4;
const PING = 6;
const CLOSE = 7;
/** Messages a client may send that this server has nothing to do with (see the README's table). */
const IGNORED = new Set([2, COMPLETION, 5, PING, 8, 9]);
const NEGOTIATED_TTL_MS = 30_000;

const record = (message: object) => Buffer.from(`${JSON.stringify(message)}\u001e`);
const HANDSHAKE_OK = record({});
const PING_FRAME = record({ type: PING });

/**
 * Thrown by a hub method to fail the client's invocation with this message (its `invoke`
 * rejects with it). Any other error is reported to `onError` and the client gets a generic one.
 */
export class HubError extends Error {}

/** A connection of {@link bindSignalR}: the SignalR connection id, its user, its socket. */
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
  /** The methods clients invoke, by name (matched case-insensitively, as ASP.NET Core does). */
  methods: Record<string, HubMethod<S>>;
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
  /** How often the server pings each client. Default 15 s (ASP.NET Core's KeepAliveInterval). */
  keepAliveIntervalMs?: number;
  /** Silence from a client after which it is closed. Default 30 s (ClientTimeoutInterval). */
  clientTimeoutMs?: number;
  /** Time a client has to send its handshake. Default 15 s. */
  handshakeTimeoutMs?: number;
  /** Largest message a client may send. Default 32 KiB (MaximumReceiveMessageSize). */
  maxMessageBytes?: number;
  /** See {@link WsBindingOptions}. */
  maxBufferedBytes?: number;
  maxQueuedMessages?: number;
  /** Messages to and from other servers' SignalR connections (its own channel). */
  bus?: ServerBus;
  onError?: (error: unknown) => void;
}

interface State<S extends BoundSocket> {
  readonly connection: SignalRConnection<S>;
  handshaken: boolean;
  /** The start of a message whose separator has not arrived yet. */
  partial: Buffer | undefined;
  lastReceived: number;
  lastPing: number;
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
  readonly #negotiated = new Map<string, { connectionId: string; userId: string; used: boolean }>();
  readonly #states = new Map<string, State<S>>();
  readonly #onError: (error: unknown) => void;
  readonly #maxMessageBytes: number;
  readonly #sweep: NodeJS.Timeout;

  constructor(wss: BoundServer<S>, options: SignalRBindingOptions<S>) {
    this.#options = options;
    this.#onError =
      options.onError ??
      ((error) => process.emitWarning(`hub-membership: bindSignalR: ${String(error)}`));
    this.#methods = new Map(
      Object.entries(options.methods).map(([name, method]) => [name.toLowerCase(), method]),
    );
    this.#maxMessageBytes = options.maxMessageBytes ?? 32 * 1024;
    const { onJoin, onLeave, onSlowConsumer } = options;
    this.#hub = bindWs(wss, {
      store: options.store,
      userIdOf: (request) => this.#authenticate(request),
      handshake: (connection, data) => this.#handshake(connection, data),
      ...(options.handshakeTimeoutMs !== undefined && {
        handshakeTimeoutMs: options.handshakeTimeoutMs,
      }),
      close: (connection, _code, reason) => this.#end(connection, reason, true),
      onConnection: (connection, groups) => {
        const state = this.#states.get(connection.id);
        if (state === undefined) return;
        state.handshaken = true;
        this.#hub.send(connection.id, HANDSHAKE_OK);
        options.onConnection?.(connection, groups);
      },
      onMessage: (connection, data) => this.#receive(connection, toBuffer(data)),
      onClose: (connection) => {
        this.#states.delete(connection.id);
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
      onError: this.#onError,
    });
    const keepAlive = options.keepAliveIntervalMs ?? 15_000;
    const timeout = options.clientTimeoutMs ?? 30_000;
    // One timer for every connection: pings the quiet ones, closes the silent ones.
    this.#sweep = setInterval(
      () => {
        const now = Date.now();
        for (const state of this.#states.values()) {
          if (!state.handshaken) continue;
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
      Math.max(10, Math.min(keepAlive, timeout) / 4),
    );
    this.#sweep.unref();
  }

  /** Resolves once the bus (if any) delivers other servers' messages. */
  ready(): Promise<unknown> {
    return this.#hub.ready();
  }

  /**
   * Answers `POST <path>/negotiate` (a connection id and token, WebSockets as the only
   * transport; 401 for a request `userIdOf` refuses). Resolves to false, having done nothing,
   * for any other path.
   */
  async handleRequest(request: IncomingMessage, response: ServerResponse): Promise<boolean> {
    const url = new URL(request.url ?? "/", "http://localhost");
    if (url.pathname !== `${this.#options.path}/negotiate`) return false;
    request.resume();
    if (request.method !== "POST") {
      answer(response, 405, { error: "Method Not Allowed" }, { Allow: "POST" });
      return true;
    }
    const requested = url.searchParams.get("negotiateVersion") ?? "0";
    if (!/^\d{1,9}$/.test(requested)) {
      answer(response, 400, { error: "negotiateVersion must be a non-negative integer" });
      return true;
    }
    let principal: WsPrincipal | undefined;
    try {
      principal = await this.#options.userIdOf(request);
    } catch (error) {
      if (error instanceof WsRefusal)
        answer(response, error.status, { error: error.message }, error.headers);
      else {
        this.#onError(error);
        answer(response, 500, { error: "Internal Server Error" });
      }
      return true;
    }
    if (principal === undefined) {
      answer(response, 401, { error: "Unauthorized" });
      return true;
    }
    const version = Number(requested) >= 1 ? 1 : 0;
    const connectionId = randomBytes(16).toString("base64url");
    const token = version === 0 ? connectionId : randomBytes(16).toString("base64url");
    const userId = typeof principal === "string" ? principal : principal.userId;
    this.#negotiated.set(token, { connectionId, userId, used: false });
    setTimeout(() => this.#negotiated.delete(token), NEGOTIATED_TTL_MS).unref();
    answer(response, 200, {
      connectionId,
      ...(version === 1 && { connectionToken: token }),
      negotiateVersion: version,
      availableTransports: [{ transport: "WebSockets", transferFormats: ["Text"] }],
    });
    return true;
  }

  /**
   * Authenticates a WebSocket upgrade to `<path>` (with the `id` a negotiate gave, or none when
   * the client skipped negotiation) and completes it: 401 before any socket for a request
   * `userIdOf` refuses, 404 for an unknown `id`, 409 for one already used.
   */
  handleUpgrade(request: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    return this.#hub.handleUpgrade(request, socket, head);
  }

  /** Invokes `target` on one connection here; false if it is not here. */
  send(connectionId: string, target: string, ...args: unknown[]): boolean {
    return this.#hub.send(connectionId, invocation(target, args));
  }

  /** Invokes `target` on every connection in `group`, here and through the bus (framed once). */
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
    const principal = await this.#options.userIdOf(request);
    if (principal === undefined) return undefined;
    const id = new URL(request.url ?? "/", "http://localhost").searchParams.get("id");
    if (id === null) return principal; // the client skipped negotiation
    const userId = typeof principal === "string" ? principal : principal.userId;
    const negotiated = this.#negotiated.get(id);
    // Another user's token is as unknown as a made-up one.
    if (negotiated === undefined || negotiated.userId !== userId)
      throw new WsRefusal(404, "Not Found");
    if (negotiated.used) throw new WsRefusal(409, "Conflict");
    negotiated.used = true;
    const { connectionId } = negotiated;
    return typeof principal === "string"
      ? { userId, connectionId }
      : { ...principal, connectionId };
  }

  #handshake(connection: SignalRConnection<S>, data: Buffer): Buffer | undefined {
    const now = Date.now();
    const state: State<S> = {
      connection,
      handshaken: false,
      partial: undefined,
      lastReceived: now,
      lastPing: now,
    };
    this.#states.set(connection.id, state);
    // Any message counts as a sign of life, before it waits its turn to be handled.
    connection.socket.on("message", () => {
      state.lastReceived = Date.now();
    });
    const end = data.indexOf(RS);
    let request: { protocol?: unknown; version?: unknown } | undefined;
    try {
      request = end < 0 ? undefined : JSON.parse(data.subarray(0, end).toString());
    } catch {
      request = undefined;
    }
    if (typeof request !== "object" || request === null)
      throw new Error("The handshake request is not valid JSON ending with 0x1E.");
    if (request.protocol !== "json")
      throw new Error(`Requested protocol '${String(request.protocol)}' is not available.`);
    if (request.version !== 1)
      throw new Error(
        `The server does not support version ${String(request.version)} of the 'json' protocol.`,
      );
    return end + 1 < data.length ? data.subarray(end + 1) : undefined;
  }

  async #receive(connection: SignalRConnection<S>, data: Buffer): Promise<void> {
    const state = this.#states.get(connection.id);
    if (state === undefined) return;
    const buffer = state.partial ? Buffer.concat([state.partial, data]) : data;
    state.partial = undefined;
    let start = 0;
    for (let end = buffer.indexOf(RS); end >= 0; end = buffer.indexOf(RS, start)) {
      const message = buffer.subarray(start, end);
      start = end + 1;
      if (!(await this.#dispatch(connection, message))) return;
    }
    if (buffer.length - start > this.#maxMessageBytes)
      this.#end(connection, "The message is larger than the server accepts.", false);
    else if (start < buffer.length) state.partial = Buffer.from(buffer.subarray(start));
  }

  /** Handles one message; false when it ended the connection. */
  async #dispatch(connection: SignalRConnection<S>, data: Buffer): Promise<boolean> {
    if (data.length > this.#maxMessageBytes)
      return this.#end(connection, "The message is larger than the server accepts.", false);
    let message: unknown;
    try {
      message = JSON.parse(data.toString());
    } catch {
      return this.#end(connection, "The server received a message that is not valid JSON.", false);
    }
    if (typeof message !== "object" || message === null || Array.isArray(message))
      return this.#end(connection, "The server received a message that is not an object.", false);
    const {
      type,
      invocationId,
      target,
      arguments: args,
      streamIds,
    } = message as Record<string, unknown>;
    if (type === CLOSE) {
      connection.socket.close(1000);
      return false;
    }
    if (typeof type === "number" && IGNORED.has(type)) return true;
    if (
      (type !== INVOCATION && type !== STREAM_INVOCATION) ||
      typeof target !== "string" ||
      !Array.isArray(args) ||
      (invocationId !== undefined && typeof invocationId !== "string")
    )
      return this.#end(connection, "The server received a message it cannot read.", false);
    const complete = (outcome: { result: unknown } | { error: string }) => {
      if (invocationId !== undefined)
        this.#hub.send(connection.id, record({ type: COMPLETION, invocationId, ...outcome }));
    };
    const method = this.#methods.get(target.toLowerCase());
    if (type === STREAM_INVOCATION || (Array.isArray(streamIds) && streamIds.length > 0))
      complete({ error: "Streaming is not supported by this server." });
    else {
      try {
        const next = async () => {
          if (method === undefined) throw new HubError(`Unknown hub method '${target}'.`);
          return method(connection, ...args);
        };
        const { filter } = this.#options;
        const invocation = { connection, target, arguments: args, size: data.length };
        const result = await (filter ? filter(invocation, next) : next());
        complete({ result: result ?? null });
      } catch (error) {
        if (error instanceof HubError) complete({ error: error.message });
        else {
          this.#onError(error);
          complete({ error: `An unexpected error occurred invoking '${target}' on the server.` });
        }
      }
    }
    return true;
  }

  /**
   * Ends a connection with what its client understands: a handshake answer carrying the error
   * before the handshake is done, a close message after. Returns false (for `#dispatch`).
   */
  #end(connection: SignalRConnection<S>, error: string | undefined, allowReconnect: boolean) {
    const { socket } = connection;
    if (socket.readyState !== 1) return false;
    if (this.#states.get(connection.id)?.handshaken) {
      this.#hub.send(connection.id, record({ type: CLOSE, error, allowReconnect }));
    } else {
      // Nothing else has been sent to it: the hub holds its messages until the handshake.
      socket.send(record({ error: error ?? "The connection was closed." }), { binary: false });
    }
    socket.close(1000);
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
  const query = new URL(request.url ?? "/", "http://localhost").searchParams.get("access_token");
  return query ?? undefined;
}

/** An invocation of a client method, as a frame of the JSON hub protocol. */
export function invocation(target: string, args: readonly unknown[]): Buffer {
  return record({ type: INVOCATION, target, arguments: args });
}

function answer(
  response: ServerResponse,
  status: number,
  body: object,
  headers: Readonly<Record<string, string>> = {},
): void {
  response.writeHead(status, {
    ...headers,
    "content-type": "application/json",
    "cache-control": "no-store",
  });
  response.end(JSON.stringify(body));
}
