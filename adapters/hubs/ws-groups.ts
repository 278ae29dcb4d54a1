import { diagnostics } from "../diagnostics.js";
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
/** Frames held for one socket past this many bytes are written at once. */
const MAX_HELD = 64 * 1024;

/** The parts of a `ws` WebSocket, not in its typings, that writing finished frames uses. */
interface WsInternals {
  _socket: { write(data: Buffer): boolean };
  _sender: { _state?: number };
  _extensions: Record<string, unknown>;
}

interface Member<S> {
  readonly id: string;
  readonly socket: S;
  /** ws's TCP socket, when finished frames may be written to it: no permessage-deflate. */
  readonly tcp: WsInternals["_socket"] | undefined;
  readonly sender: WsInternals["_sender"] | undefined;
  /** The turn of the event loop this socket was last written to directly. */
  turn: number;
  /** Frames held until the end of that turn. */
  held: Held | undefined;
  /** What text frames become for this socket, sent as binary (another protocol's encoding). */
  encode?: ((payload: Buffer) => Buffer) | undefined;
}

/**
 * Frames held for sockets until the end of a turn, as a tree: the members of a group that got
 * the same broadcasts share one node, so a turn's frames are concatenated once per distinct
 * sequence, not once per socket.
 */
class Held {
  #lastFrame: Buffer | undefined;
  #lastChild: Held | undefined;
  #children: Map<Buffer, Held> | undefined;
  #joined: Buffer | undefined;

  constructor(
    readonly parent: Held | undefined,
    readonly frame: Buffer | undefined,
    readonly bytes: number,
  ) {}

  after(frame: Buffer): Held {
    // A broadcast moves every member of a group from one node to the same child.
    if (this.#lastFrame === frame) return this.#lastChild as Held;
    let child = this.#children?.get(frame);
    if (child === undefined) {
      child = new Held(this, frame, this.bytes + frame.length);
      this.#children ??= new Map();
      this.#children.set(frame, child);
    }
    this.#lastFrame = frame;
    this.#lastChild = child;
    return child;
  }

  joined(): Buffer {
    if (this.#joined === undefined) {
      const frames: Buffer[] = [];
      for (let node: Held | undefined = this; node?.frame; node = node.parent)
        frames.push(node.frame);
      this.#joined = frames.length === 1 ? (frames[0] as Buffer) : Buffer.concat(frames.reverse());
    }
    return this.#joined;
  }
}

/** An unmasked, final text frame (RFC 6455, section 5.2) carrying `payload`, in one buffer. */
export function textFrame(payload: Buffer, opcode = 0x1): Buffer {
  const length = payload.length;
  const headerLength = length < 126 ? 2 : length < 65_536 ? 4 : 10;
  const frame = Buffer.allocUnsafe(headerLength + length);
  frame[0] = 0x80 | opcode;
  if (length < 126) frame[1] = length;
  else if (length < 65_536) {
    frame[1] = 126;
    frame.writeUInt16BE(length, 2);
  } else {
    frame[1] = 127;
    frame.writeBigUInt64BE(BigInt(length), 2);
  }
  payload.copy(frame, headerLength);
  return frame;
}

/**
 * The groups of a `ws` server (or any socket with `send`), as a {@link HubBinding}: connection
 * ids map to sockets, groups to sets of connections. Join and leave are synchronous, so once
 * `leave` returns no later broadcast reaches that connection.
 *
 * Sending: a message is framed once for all its recipients. The first frame a socket gets in a
 * turn of the event loop is written at once; later ones in the same turn are held and written
 * together at its end, one write per socket (after a turn of bursts, the first is held too). The
 * socket's own `send` and `close` write what is held for it first: one order, whichever way.
 */
export class WsGroups<S extends GroupSocket = GroupSocket> implements HubBinding {
  readonly #members = new Map<string, Member<S>>();
  readonly #groups = new Map<string, Set<Member<S>>>();
  readonly #options: WsGroupsOptions;
  readonly #maxBuffered: number;
  #turn = 1;
  #turnEnding = false;
  #root = new Held(undefined, undefined, 0);
  #holding: Member<S>[] = [];
  /** Deliveries this turn to sockets already sent to in it. */
  #repeats = 0;
  /**
   * Whether the last turn sent some socket more than one frame: then this one holds the first
   * frame too, for one write per socket per turn in a run of bursts. A lone message a turn is
   * written at once.
   */
  #burst = false;
  #lastEncoded: Buffer | undefined;
  #lastBinaryFrame: Buffer = Buffer.alloc(0);

  constructor(options: WsGroupsOptions = {}) {
    this.#options = options;
    this.#maxBuffered = options.maxBufferedBytes ?? 4 * 1024 * 1024;
  }

  /** Registers a socket under `connectionId`. */
  add(connectionId: string, socket: S): void {
    const raw = socket as Partial<WsInternals>;
    const direct =
      typeof raw._socket?.write === "function" &&
      raw._sender !== undefined &&
      !raw._extensions?.["permessage-deflate"];
    const member: Member<S> = {
      id: connectionId,
      socket,
      tcp: direct ? raw._socket : undefined,
      sender: direct ? raw._sender : undefined,
      turn: 0,
      held: undefined,
    };
    this.#members.set(connectionId, member);
    if (direct) {
      // What the app writes through the socket itself (a reply, a close frame) comes after what
      // this turn holds for it, as it would through ws alone.
      const own = socket as unknown as Record<"send" | "close", (...args: unknown[]) => unknown>;
      for (const name of ["send", "close"] as const) {
        const original = own[name];
        own[name] = (...args: unknown[]) => {
          this.#flush(member);
          return original.apply(socket, args);
        };
      }
    }
  }

  /**
   * Forgets a connection and takes it out of every group (no `onLeave`: it is gone). `groups`,
   * the groups it is in, if you know them (`MembershipSync.groupsOfConnection`): a connection
   * keeps no list of its own, so that a user's 20,000 groups are not copied per connection;
   * without them every group here is looked at.
   */
  remove(connectionId: string, groups?: Iterable<string>): void {
    const member = this.#members.get(connectionId);
    if (member === undefined) return;
    for (const group of groups ?? [...this.#groups.keys()]) this.#drop(member, group);
    this.#members.delete(connectionId);
    member.held = undefined; // gone (closed, or terminated as slow): nothing more to write
  }

  /**
   * From now on, the text messages sent to this connection (its own and its groups') are passed
   * through `encode` and sent as binary messages: a connection that speaks another encoding of
   * the same protocol. `encode` should remember its last frame: a group's message comes to all
   * its members as the same buffer. An empty result is not sent.
   */
  encode(connectionId: string, encode: (payload: Buffer) => Buffer): void {
    const member = this.#members.get(connectionId);
    if (member === undefined) return;
    this.#flush(member);
    member.encode = encode;
  }

  socket(connectionId: string): S | undefined {
    return this.#members.get(connectionId)?.socket;
  }

  join(connectionId: string, group: string, reason?: JoinReason): void {
    const member = this.#members.get(connectionId);
    if (member === undefined) return;
    const members = this.#groups.get(group) ?? new Set<Member<S>>();
    if (members.has(member)) return;
    if (members.size === 0) this.#groups.set(group, members);
    members.add(member);
    this.#options.onJoin?.(connectionId, group, reason);
  }

  leave(connectionId: string, group: string, reason?: LeaveReason): void {
    const member = this.#members.get(connectionId);
    if (member === undefined || !this.#drop(member, group)) return;
    this.#options.onLeave?.(connectionId, group, reason);
  }

  /** How many connections are in `group` on this server. */
  size(group: string): number {
    return this.#groups.get(group)?.size ?? 0;
  }

  /**
   * Sends `data` to every connection in `group` as one text message, framed once for all.
   * @returns how many sockets it was handed to.
   */
  /** Groups with at least one connection here. */
  get groupCount(): number {
    return this.#groups.size;
  }

  broadcast(group: string, data: Buffer | string): number {
    const members = this.#groups.get(group);
    if (members === undefined) return 0;
    const payload = typeof data === "string" ? Buffer.from(data) : data;
    const frame = textFrame(payload);
    let sent = 0;
    // Deleting the current entry while iterating a Set is safe (a slow consumer is removed).
    for (const member of members) if (this.#deliver(member, payload, frame)) sent++;
    return sent;
  }

  /** Sends to one connection, terminating it instead when it is too far behind. */
  send(connectionId: string, data: Buffer | string): boolean {
    const member = this.#members.get(connectionId);
    if (member === undefined) return false;
    const payload = typeof data === "string" ? Buffer.from(data) : data;
    return this.#deliver(member, payload, member.tcp && textFrame(payload));
  }

  /**
   * Sends several messages to one connection in one write where it can: what a client gets on
   * opening (a handshake answer, a welcome) arrives in one read, so it handles them in one go.
   */
  sendAll(connectionId: string, messages: ReadonlyArray<Buffer | string>): boolean {
    const member = this.#members.get(connectionId);
    if (member === undefined) return false;
    const { socket, tcp } = member;
    const direct =
      tcp !== undefined && member.encode === undefined && (member.sender?._state ?? 0) === 0;
    if (messages.length < 2 || !direct) {
      let sent = true;
      for (const message of messages) sent = this.send(connectionId, message) && sent;
      return sent;
    }
    if (socket.readyState !== OPEN || (member.held === undefined && this.#isSlow(member)))
      return false;
    this.#flush(member);
    const frames = messages.map((m) => textFrame(typeof m === "string" ? Buffer.from(m) : m));
    tcp.write(Buffer.concat(frames));
    return true;
  }

  #deliver(member: Member<S>, text: Buffer, framed: Buffer | undefined): boolean {
    const { socket, tcp } = member;
    if (socket.readyState !== OPEN) return false;
    // Held frames are ours to write: only what the socket itself has not sent counts.
    if (member.held === undefined && this.#isSlow(member)) return false;
    let payload = text;
    let frame = framed;
    if (member.encode !== undefined) {
      payload = member.encode(text);
      if (payload.length === 0) return true;
      frame = tcp && this.#binaryFrame(payload);
    }
    if (tcp === undefined || frame === undefined || (member.sender?._state ?? 0) !== 0) {
      // Text frames, also for a Buffer: ws would otherwise send a Buffer as a binary frame. Also
      // while ws's sender is busy (a Blob being read): it queues, and a write would overtake.
      this.#flush(member);
      socket.send(payload, { binary: member.encode !== undefined });
    } else if (member.turn !== this.#turn && !this.#burst) {
      member.turn = this.#turn;
      this.#endTurnLater();
      tcp.write(frame);
    } else if (frame.length > MAX_HELD) {
      this.#flush(member);
      tcp.write(frame);
    } else {
      if (member.turn === this.#turn) this.#repeats++;
      else {
        member.turn = this.#turn;
        this.#endTurnLater();
      }
      if (member.held === undefined) this.#holding.push(member);
      const held = (member.held ?? this.#root).after(frame);
      member.held = held;
      if (held.bytes > MAX_HELD) this.#flush(member);
    }
    return true;
  }

  /** The binary frame of an encoded payload: a group's members share the last one. */
  #binaryFrame(payload: Buffer): Buffer {
    if (payload !== this.#lastEncoded) {
      this.#lastEncoded = payload;
      this.#lastBinaryFrame = textFrame(payload, 0x2);
    }
    return this.#lastBinaryFrame;
  }

  #isSlow(member: Member<S>): boolean {
    const bufferedBytes = member.socket.bufferedAmount;
    if (bufferedBytes <= this.#maxBuffered) return false;
    if (diagnostics.slowConsumer.hasSubscribers)
      diagnostics.slowConsumer.publish({ connectionId: member.id, bufferedBytes });
    member.socket.terminate();
    this.remove(member.id);
    this.#options.onSlowConsumer?.(member.id);
    return true;
  }

  /** Writes what is held for `member`, if anything. */
  #flush(member: Member<S>): void {
    const held = member.held;
    if (held === undefined) return;
    member.held = undefined;
    member.tcp?.write(held.joined());
  }

  #endTurnLater(): void {
    if (this.#turnEnding) return;
    this.#turnEnding = true;
    setImmediate(this.#endTurn);
  }

  readonly #endTurn = () => {
    this.#turnEnding = false;
    this.#turn++;
    this.#burst = this.#repeats > 0;
    this.#repeats = 0;
    const holding = this.#holding;
    this.#holding = [];
    this.#root = new Held(undefined, undefined, 0);
    for (const member of holding) {
      // A socket closed or dropped meanwhile gets nothing more; its close frame may be out.
      if (member.held === undefined) continue;
      if (member.socket.readyState !== OPEN || this.#members.get(member.id) !== member)
        member.held = undefined;
      else if (!this.#isSlow(member)) this.#flush(member);
    }
  };

  /** Takes a member out of a group; false if it was not in it. */
  #drop(member: Member<S>, group: string): boolean {
    const members = this.#groups.get(group);
    if (!members?.delete(member)) return false;
    if (members.size === 0) this.#groups.delete(group);
    return true;
  }
}

/** One buffer of a `ws` message, whatever its binaryType. */
export function toBuffer(data: Buffer | ArrayBuffer | Buffer[]): Buffer {
  if (Buffer.isBuffer(data)) return data;
  return Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
}
