import type { HubBinding, JoinReason, LeaveReason } from "../sync/membership-sync.js";

/** What {@link WsGroups} needs of a socket; a `ws` WebSocket has it. */
export interface GroupSocket {
  readonly readyState: number;
  readonly bufferedAmount: number;
  send(data: Buffer | string, options: { binary: boolean }): void;
  terminate(): void;
}

export interface WsGroupsOptions {
  /**
   * A socket whose unsent data exceeds this many bytes is terminated instead of being sent more:
   * one client that does not read must not make the server buffer without bound. Default 4 MiB.
   */
  maxBufferedBytes?: number;
  /** Called after a connection joined a group (tell the client, if the reason calls for it). */
  onJoin?: (connectionId: string, group: string, reason: JoinReason | undefined) => void;
  /** Called after a connection left a group, before anything else can be sent to the group. */
  onLeave?: (connectionId: string, group: string, reason: LeaveReason | undefined) => void;
  /** Called when a slow consumer is terminated. */
  onSlowConsumer?: (connectionId: string) => void;
}

const OPEN = 1;
const MAX_CORKED = 16 * 1024;

interface Corkable {
  cork(): void;
  uncork(): void;
}

/** The parts of a `ws` WebSocket, not in its typings, that a pre-framed send uses. */
interface WsInternals {
  _socket: Corkable;
  _sender: { sendFrame(frame: Buffer[]): void };
  _extensions: Record<string, unknown>;
}

/** The header of an unmasked, final text frame of `length` bytes (RFC 6455, section 5.2). */
function textFrameHeader(length: number): Buffer {
  if (length < 126) return Buffer.from([0x81, length]);
  if (length < 65_536) return Buffer.from([0x81, 126, length >> 8, length & 0xff]);
  const header = Buffer.alloc(10);
  header[0] = 0x81;
  header[1] = 127;
  header.writeBigUInt64BE(BigInt(length), 2);
  return header;
}

/**
 * The groups of a `ws` server (or any socket with `send`), as a {@link HubBinding}: connection
 * ids map to sockets, groups to sets of connection ids. Join and leave are synchronous, so once
 * `leave` returns no later broadcast reaches that connection.
 */
export class WsGroups<S extends GroupSocket = GroupSocket> implements HubBinding {
  readonly #sockets = new Map<string, S>();
  readonly #groups = new Map<string, Set<string>>();
  readonly #ofConnection = new Map<string, Set<string>>();
  readonly #options: WsGroupsOptions;
  readonly #maxBuffered: number;
  /** Sockets corked in this turn of the event loop, with the bytes held back. */
  readonly #corked = new Map<Corkable, number>();
  #uncorkScheduled = false;

  constructor(options: WsGroupsOptions = {}) {
    this.#options = options;
    this.#maxBuffered = options.maxBufferedBytes ?? 4 * 1024 * 1024;
  }

  /** Registers a socket under `connectionId`. */
  add(connectionId: string, socket: S): void {
    this.#sockets.set(connectionId, socket);
    this.#ofConnection.set(connectionId, new Set());
  }

  /** Forgets a connection and takes it out of every group (no `onLeave`: it is gone). */
  remove(connectionId: string): void {
    for (const group of this.#ofConnection.get(connectionId) ?? []) this.#drop(connectionId, group);
    this.#ofConnection.delete(connectionId);
    this.#sockets.delete(connectionId);
  }

  socket(connectionId: string): S | undefined {
    return this.#sockets.get(connectionId);
  }

  join(connectionId: string, group: string, reason?: JoinReason): void {
    const groups = this.#ofConnection.get(connectionId);
    if (groups === undefined || groups.has(group)) return;
    groups.add(group);
    const members = this.#groups.get(group) ?? new Set<string>();
    if (members.size === 0) this.#groups.set(group, members);
    members.add(connectionId);
    this.#options.onJoin?.(connectionId, group, reason);
  }

  leave(connectionId: string, group: string, reason?: LeaveReason): void {
    if (!this.#ofConnection.get(connectionId)?.delete(group)) return;
    this.#drop(connectionId, group);
    this.#options.onLeave?.(connectionId, group, reason);
  }

  /** How many connections are in `group` on this server. */
  size(group: string): number {
    return this.#groups.get(group)?.size ?? 0;
  }

  /**
   * Sends `data` to every connection in `group` as one text message. It is framed once for all
   * recipients, and each recipient's TCP socket is corked until the end of this turn of the event
   * loop, so a burst of broadcasts reaches each socket in one write.
   * @returns how many sockets it was handed to.
   */
  broadcast(group: string, data: Buffer | string): number {
    const members = this.#groups.get(group);
    if (members === undefined) return 0;
    const payload = typeof data === "string" ? Buffer.from(data) : data;
    const frame = [textFrameHeader(payload.length), payload];
    let sent = 0;
    // Deleting the current entry while iterating a Set is safe (a slow consumer is removed).
    for (const connectionId of members) if (this.#deliver(connectionId, payload, frame)) sent++;
    return sent;
  }

  /** Sends to one connection, terminating it instead when it is too far behind. */
  send(connectionId: string, data: Buffer | string): boolean {
    return this.#deliver(connectionId, data, undefined);
  }

  #deliver(connectionId: string, data: Buffer | string, frame: Buffer[] | undefined): boolean {
    const socket = this.#sockets.get(connectionId);
    if (socket === undefined || socket.readyState !== OPEN) return false;
    const raw = socket as Partial<WsInternals>;
    // Bytes held back by our own cork are not the client's fault.
    const held = (raw._socket && this.#corked.get(raw._socket)) ?? 0;
    if (socket.bufferedAmount - held > this.#maxBuffered) {
      socket.terminate();
      this.remove(connectionId);
      this.#options.onSlowConsumer?.(connectionId);
      return false;
    }
    // The same shortcut Socket.IO takes for its broadcasts (engine.io's websocket transport):
    // hand ws's sender a finished frame. Only without permessage-deflate, which frames differ by.
    if (
      frame &&
      raw._socket &&
      typeof raw._sender?.sendFrame === "function" &&
      !raw._extensions?.["permessage-deflate"]
    ) {
      this.#cork(raw._socket, (frame[0]?.length ?? 0) + (frame[1]?.length ?? 0));
      raw._sender.sendFrame(frame);
    } else {
      // Text frames, also for a Buffer: ws would otherwise send a Buffer as a binary frame.
      socket.send(data, { binary: false });
    }
    return true;
  }

  /**
   * Corks `socket` until the end of this turn of the event loop, or until `bytes` more would
   * hold back over 16 KiB: corked bytes count as unsent, and must never make a reader look slow.
   */
  #cork(socket: Corkable, bytes: number): void {
    const held = this.#corked.get(socket);
    if (held !== undefined && held + bytes <= MAX_CORKED) {
      this.#corked.set(socket, held + bytes);
      return;
    }
    if (held !== undefined) {
      socket.uncork(); // flush what is held, in order, before more
      this.#corked.delete(socket);
    }
    if (bytes > MAX_CORKED) return; // large frames gain nothing from waiting
    if (!this.#uncorkScheduled) {
      this.#uncorkScheduled = true;
      setImmediate(this.#uncorkAll);
    }
    socket.cork();
    this.#corked.set(socket, bytes);
  }

  readonly #uncorkAll = () => {
    this.#uncorkScheduled = false;
    for (const socket of this.#corked.keys()) socket.uncork();
    this.#corked.clear();
  };

  #drop(connectionId: string, group: string): void {
    const members = this.#groups.get(group);
    if (members?.delete(connectionId) && members.size === 0) this.#groups.delete(group);
  }
}
