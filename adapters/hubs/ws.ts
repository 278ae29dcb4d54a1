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
   * Sends `data` to every connection in `group`. Encode once and pass a Buffer: it is shared
   * by every recipient, not copied per socket.
   * @returns how many sockets it was handed to.
   */
  broadcast(group: string, data: Buffer | string): number {
    const members = this.#groups.get(group);
    if (members === undefined) return 0;
    let sent = 0;
    for (const connectionId of [...members]) if (this.send(connectionId, data)) sent++;
    return sent;
  }

  /** Sends to one connection, terminating it instead when it is too far behind. */
  send(connectionId: string, data: Buffer | string): boolean {
    const socket = this.#sockets.get(connectionId);
    if (socket === undefined || socket.readyState !== OPEN) return false;
    if (socket.bufferedAmount > this.#maxBuffered) {
      socket.terminate();
      this.remove(connectionId);
      this.#options.onSlowConsumer?.(connectionId);
      return false;
    }
    // Text frames, also for a Buffer: ws would otherwise send a Buffer as a binary frame.
    socket.send(data, { binary: false });
    return true;
  }

  #drop(connectionId: string, group: string): void {
    const members = this.#groups.get(group);
    if (members?.delete(connectionId) && members.size === 0) this.#groups.delete(group);
  }
}
