import { EventEmitter } from "node:events";
import type { BoundSocket } from "./ws.js";

const OPEN = 1;
const CLOSED = 3;
/** Events of the socket of the moment that the connection's listeners get. */
const FORWARDED = ["message", "ping", "pong", "error"] as const;
/** `{"type":` as bytes: every frame this binding sends starts with it, or is a handshake answer. */
const TYPE_PREFIX = Buffer.from('{"type":');

/**
 * Whether a frame is a hub message that stateful reconnect counts and replays (`Invocation`,
 * `StreamItem`, `Completion`, `StreamInvocation`, `CancelInvocation`: types 1 to 5), as opposed
 * to a handshake answer, `Ping`, `Close`, `Ack` or `Sequence`. A binary frame is MessagePack:
 * its length, then an array whose first element is the type.
 */
export function isTrackable(data: Buffer | string, binary = false): boolean {
  if (binary && typeof data !== "string") {
    let at = 0;
    while (at < data.length && (data[at] as number) >= 0x80) at++;
    const header = data[at + 1];
    const type = data[at + 2];
    return (
      header !== undefined &&
      header >= 0x90 &&
      header <= 0x9f &&
      type !== undefined &&
      type >= 1 &&
      type <= 5
    );
  }
  const frame = typeof data === "string" ? Buffer.from(data.slice(0, 10)) : data;
  if (frame.length < TYPE_PREFIX.length + 2) return false;
  if (frame.compare(TYPE_PREFIX, 0, TYPE_PREFIX.length, 0, TYPE_PREFIX.length) !== 0) return false;
  const type = (frame[TYPE_PREFIX.length] as number) - 48;
  const after = frame[TYPE_PREFIX.length + 1] as number;
  return type >= 1 && type <= 5 && (after < 48 || after > 57);
}

/**
 * One SignalR connection that outlives its WebSockets, for stateful reconnect (HubProtocol.md,
 * "Stateful Reconnect"): the hub sees one socket, `socket`, for the connection's whole life. It
 * numbers the trackable messages it is sent and keeps them until the client acks them; when the
 * WebSocket of the moment drops, the connection stays (in its groups, buffering) for
 * `windowMs`; a new WebSocket with the same connection token is attached, told the next
 * sequence id, and sent what the client has not acked, in order.
 */
export class ReplayableConnection<S extends BoundSocket> {
  /** What the hub holds: the socket of the moment, with sending, closing and events the connection's. */
  readonly socket: S;
  readonly #events = new EventEmitter();
  readonly #windowMs: number;
  readonly #maxBytes: number;
  readonly #onEnd: () => void;
  #current: S | undefined;
  #buffer: Array<{ id: number; frame: Buffer | string; bytes: number; binary: boolean }> = [];
  #bufferedBytes = 0;
  /** The id of the last trackable message sent. */
  #sent = 0;
  /** False once the buffer overflowed: a reconnect could not replay all, so none is allowed. */
  #resumable = true;
  #closing = false;
  #ended = false;
  /**
   * Whether the client counts what it gets: the official clients count only once their start
   * has finished, after the handshake, and say so with their first message (a ping). Trackable
   * messages wait until then, numbered and buffered, so that both sides count the same ones.
   */
  #counting = false;
  #window: NodeJS.Timeout | undefined;
  /** Trackable messages received: the last id processed and the next one expected. */
  received = 0;
  nextIncoming = 1;
  /** The last id acked to the client. */
  acked = 0;

  constructor(first: S, options: { windowMs: number; maxBytes: number; onEnd: () => void }) {
    this.#windowMs = options.windowMs;
    this.#maxBytes = options.maxBytes;
    this.#onEnd = options.onEnd;
    this.#events.setMaxListeners(0);
    const overrides: Record<PropertyKey, unknown> = {
      send: (data: Buffer | string, opts: { binary: boolean }) => this.#send(data, opts),
      close: (code?: number, reason?: string) => {
        this.#closing = true;
        if (this.#current === undefined) return this.#end();
        this.#current.close(code, reason);
      },
      terminate: () => {
        this.#closing = true;
        if (this.#current === undefined) return this.#end();
        this.#current.terminate();
      },
      on: (event: string, listener: (...args: unknown[]) => void) => {
        this.#events.on(event, listener);
        return this.socket;
      },
      once: (event: string, listener: (...args: unknown[]) => void) => {
        this.#events.once(event, listener);
        return this.socket;
      },
      off: (event: string, listener: (...args: unknown[]) => void) => {
        this.#events.off(event, listener);
        return this.socket;
      },
    };
    this.socket = new Proxy(first, {
      get: (target, property) => {
        if (property in overrides) return overrides[property];
        if (property === "readyState") return this.#ended ? CLOSED : OPEN;
        if (property === "bufferedAmount") return this.#current?.bufferedAmount ?? 0;
        // ws's internals stay hidden: WsGroups then sends through `send`, which counts.
        if (property === "_socket" || property === "_sender") return undefined;
        const current = this.#current ?? target;
        const value = Reflect.get(current, property) as unknown;
        return typeof value === "function" ? value.bind(current) : value;
      },
    });
    this.#attach(first);
  }

  /** The client sent its first message after the handshake: what waited for it is sent. */
  counting(): void {
    if (this.#counting) return;
    this.#counting = true;
    const current = this.#current;
    if (current?.readyState === OPEN)
      for (const { frame, binary } of this.#buffer) current.send(frame, { binary });
  }

  /** Bytes of trackable messages sent and not acked by the client yet (what a replay holds). */
  get unacked(): number {
    return this.#bufferedBytes;
  }

  /** Whether a WebSocket carries it right now. */
  get attached(): boolean {
    return this.#current !== undefined;
  }

  /** Whether a new WebSocket may take this connection over. */
  get resumable(): boolean {
    return this.#resumable && !this.#ended && !this.#closing;
  }

  /** The client acked every trackable message up to `id`: they are let go. */
  ack(id: number): void {
    let drop = 0;
    while (drop < this.#buffer.length && (this.#buffer[drop]?.id ?? Infinity) <= id) {
      this.#bufferedBytes -= this.#buffer[drop]?.bytes ?? 0;
      drop++;
    }
    if (drop > 0) this.#buffer = this.#buffer.slice(drop);
  }

  /**
   * A new WebSocket for this connection (the old one may not know yet that it is gone): tells
   * the client the next sequence id, then replays what it has not acked.
   */
  reattach(socket: S, sequence: (id: number) => Buffer, binary: boolean): void {
    clearTimeout(this.#window);
    this.#window = undefined;
    const old = this.#current;
    this.#current = undefined;
    old?.terminate();
    this.#attach(socket);
    socket.send(sequence((this.#buffer[0]?.id ?? this.#sent + 1) as number), { binary });
    for (const { frame, binary } of this.#buffer) socket.send(frame, { binary });
  }

  #attach(socket: S): void {
    this.#current = socket;
    const events = socket as unknown as EventEmitter;
    for (const event of FORWARDED)
      events.on(event, (...args: unknown[]) => {
        if (this.#current === socket) this.#events.emit(event, ...args);
      });
    events.on("close", (code: number) => {
      if (this.#current !== socket) return; // replaced by a newer one
      this.#current = undefined;
      // Only a connection lost without a close frame (1006) may come back: a client that
      // closed it meant to.
      if (this.#closing || !this.#resumable || code !== 1006) return this.#end();
      // Gone without a goodbye: the client may come back with the same token.
      this.#window = setTimeout(() => this.#end(), this.#windowMs);
      this.#window.unref();
    });
  }

  #send(data: Buffer | string, options: { binary: boolean }): void {
    if (this.#ended) return;
    const trackable = isTrackable(data, options.binary);
    if (trackable) {
      const id = ++this.#sent;
      const bytes = typeof data === "string" ? Buffer.byteLength(data) : data.length;
      if (this.#resumable) {
        this.#buffer.push({ id, frame: data, bytes, binary: options.binary });
        this.#bufferedBytes += bytes;
        if (this.#bufferedBytes > this.#maxBytes) {
          // More unacked than may be kept: a reconnect could not replay it all.
          this.#resumable = false;
          this.#buffer = [];
          this.#bufferedBytes = 0;
          if (this.#current === undefined) {
            this.#end();
            return;
          }
        }
      }
    }
    const current = this.#current;
    // Before the client counts, a trackable message waits in the buffer (see #counting).
    if (trackable && !this.#counting && this.#resumable) return;
    if (current?.readyState === OPEN) current.send(data, options);
  }

  #end(): void {
    if (this.#ended) return;
    this.#ended = true;
    clearTimeout(this.#window);
    this.#buffer = [];
    this.#onEnd();
    this.#events.emit("close");
  }
}
