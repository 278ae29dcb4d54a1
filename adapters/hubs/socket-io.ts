import { type MembershipChange, MembershipError, type MembershipStore } from "../contract.js";
import type { Presence, PresenceEvent } from "../presence/presence.js";
import { type JoinReason, type LeaveReason, MembershipSync } from "../sync/membership-sync.js";

/** What the binding uses of a Socket.IO `Socket` (a `socket.io` 4 socket has it). */
export interface SocketIoSocket {
  readonly id: string;
  join(room: string): void | Promise<void>;
  leave(room: string): void | Promise<void>;
  once(event: "disconnect", listener: () => void): unknown;
  readonly conn: {
    readonly readyState: string;
    once(event: "close", listener: () => void): unknown;
    off(event: "close", listener: () => void): unknown;
  };
}

/** socket.io-parser's EVENT packet type. */
const EVENT = 2;

/** Socket.IO's connection state recovery settings, as the binding reads them. */
interface Recovery {
  readonly maxDisconnectionDuration?: number;
  readonly skipMiddlewares?: boolean;
}

/** A session as Socket.IO's adapter keeps it for a socket that may recover. */
interface Session {
  rooms: string[];
}

/** What the binding uses of a namespace's adapter, with connection state recovery on. */
interface RecoveryAdapter {
  restoreSession(
    pid: string,
    offset: string,
  ): Promise<(Session & { missedPackets: unknown[] }) | null> | null;
  /** The in-memory adapter's sessions, by private id: filtered before a restore. */
  readonly sessions?: Map<string, Session>;
  /** The in-memory adapter's packets kept for recovery, oldest first. */
  readonly packets?: ReadonlyArray<{
    id: string;
    opts: { rooms: Set<string>; except?: Set<string> };
    data: unknown[];
  }>;
}

/** A recovered socket, as the binding sends it what it missed once it is connected. */
interface Missed {
  readonly adapter: RecoveryAdapter;
  readonly offset: string;
  /** The rooms it was given back (a room granted while it was away is not one). */
  readonly rooms: readonly string[];
  /** When it was restored: a connection refused by an earlier middleware never comes to say. */
  readonly at: number;
}

/** What the binding uses of a Socket.IO `Server` or `Namespace`. */
export interface SocketIoNamespace<S extends SocketIoSocket> {
  use(middleware: (socket: S, next: (error?: Error) => void) => void): unknown;
  readonly _opts?: { connectionStateRecovery?: Recovery };
  readonly server?: { readonly _opts?: { connectionStateRecovery?: Recovery } };
  /** A namespace's adapter; on a `Server`, a method (the binding then uses `of("/")`). */
  readonly adapter?: unknown;
  of?(name: "/"): { readonly adapter: unknown };
  on?(event: "connection", listener: (socket: S) => void): unknown;
  /** This server's sockets only (Socket.IO 4's `io.local`): where presence events go. */
  readonly local?: { to(room: string): { emit(event: string, ...args: unknown[]): unknown } };
}

/** What {@link SocketIoBindingOptions.onRecovered} is told. */
export interface RecoveryReport {
  /** Groups it was in when it disconnected, is in now, and whose missed messages it got. */
  readonly recovered: readonly string[];
  /**
   * Groups it was in when it disconnected whose membership changed meanwhile (revoked, expired,
   * granted again): it got none of their missed messages, and is in them only if it is a member
   * now. The client should re-fetch those it is still in.
   */
  readonly lost: readonly string[];
  /** How many missed packets it is sent next (absent when Socket.IO sent them itself). */
  readonly replayed?: number;
}

export interface SocketIoBindingOptions<S extends SocketIoSocket> {
  store: MembershipStore;
  /**
   * The user a socket acts for, from what your authentication middleware (registered before
   * `bindSocketIo`) found, e.g. `socket.data.userId`. A throw refuses the connection with it.
   */
  userIdOf(socket: S): string | Promise<string>;
  /** The room a group is kept in. Default: the group name itself. */
  room?: (group: string) => string;
  /** Called after a socket joined a group's room (tell the client if the reason calls for it). */
  onJoin?: (socket: S, group: string, reason: JoinReason | undefined) => void;
  /** Called after a socket left a group's room, before anything else is sent to the room. */
  onLeave?: (socket: S, group: string, reason: LeaveReason | undefined) => void;
  /** See {@link MembershipSyncOptions.onError}. */
  onError?: (error: unknown) => void;
  /**
   * With Socket.IO's `connectionStateRecovery`: a socket was recovered, checked against the
   * store. Called when it connects, before the `connection` listeners registered after
   * `bindSocketIo`.
   */
  onRecovered?: (socket: S, report: RecoveryReport) => void;
  /** Who is connected in each group (see `Presence`); read it as `sync.presence`. */
  presence?: Presence;
  /**
   * With `presence`: the event emitted with `{ group, userId, online }` to a group's sockets on
   * this server when a user comes online in it or goes. Default: none is.
   */
  presenceEvent?: string;
}

/** A socket that disconnected and may recover, while it may. */
interface Away {
  readonly pid: string;
  readonly userId: string;
  /** Its groups when it disconnected. */
  readonly groups: readonly string[];
  /** Groups whose membership changed since; `all` after a `resync` (changes may be missed). */
  changed: Set<string> | "all";
  readonly timer: NodeJS.Timeout;
}

/**
 * Binds a Socket.IO server (or one namespace) to a membership store: a middleware joins every
 * new socket to its user's stored groups before the connection completes (so before any event
 * handler runs), and grants, revokes and expiries, from this process or any other writing to the
 * same storage, join or leave every socket of the user on this server.
 *
 * Each server applies changes to its own sockets only (local `socket.join` / `socket.leave`,
 * never the adapter-wide `io.in(...).socketsLeave`): with several servers behind an adapter,
 * every socket is moved exactly once, by the server that holds it.
 *
 * With `connectionStateRecovery`, a recovered socket is checked against the store before
 * Socket.IO restores it (socket.io#5491): it gets back only the rooms of groups it is still a
 * member of and whose membership did not change while it was away, and only their missed
 * packets; see {@link SocketIoBindingOptions.onRecovered}.
 *
 * @returns the {@link MembershipSync} (`grant`, `revoke`, `isInGroup(socket.id, group)`, `close`).
 * @throws MembershipError `INVALID_ARGUMENT` with connection state recovery unless
 * `skipMiddlewares` is `false` (Socket.IO's default is `true`): a socket recovered without the
 * middleware would never be checked nor follow the store.
 */
export function bindSocketIo<S extends SocketIoSocket>(
  io: SocketIoNamespace<S>,
  options: SocketIoBindingOptions<S>,
): MembershipSync {
  const recovery = (io._opts ?? io.server?._opts)?.connectionStateRecovery;
  if (recovery?.skipMiddlewares) {
    throw new MembershipError(
      "INVALID_ARGUMENT",
      "bindSocketIo needs connectionStateRecovery: { skipMiddlewares: false }: Socket.IO's default recovers sockets without any middleware, which would bypass the store",
    );
  }
  const room = options.room ?? ((group: string) => group);
  const { presenceEvent } = options;
  // Sockets by id from the middleware on: they are not in the namespace until it completes.
  const sockets = new Map<string, S>();
  const away = recovery === undefined ? undefined : new Recoveries(recovery, room, options);
  const sync = new MembershipSync({
    store: options.store,
    ...(options.onError && { onError: options.onError }),
    ...(away && { onChange: (change: MembershipChange) => away.changed(change) }),
    ...(options.presence && { presence: options.presence }),
    ...(presenceEvent !== undefined && {
      // Each server tells its own sockets: `local`, never through the adapter to every server.
      onPresence: (event: PresenceEvent) =>
        io.local?.to(room(event.group)).emit(presenceEvent, event),
    }),
    hub: {
      async join(id, group, reason) {
        const socket = sockets.get(id);
        if (socket === undefined) return;
        await socket.join(room(group));
        options.onJoin?.(socket, group, reason);
      },
      async leave(id, group, reason) {
        const socket = sockets.get(id);
        if (socket === undefined) return;
        await socket.leave(room(group));
        options.onLeave?.(socket, group, reason);
      },
    },
  });
  away?.guard(typeof io.adapter === "function" ? io.of?.("/").adapter : io.adapter);
  const reports = new WeakMap<S, RecoveryReport>();
  io.on?.("connection", (socket) => {
    const report = reports.get(socket);
    reports.delete(socket);
    if (report === undefined) return;
    // In the turn it connected: before any packet broadcast from now on.
    const pid = (socket as { pid?: unknown }).pid;
    const rooms = (socket as { rooms?: Set<string> }).rooms ?? new Set<string>();
    const missed = (typeof pid === "string" && away?.missed(pid, rooms)) || undefined;
    options.onRecovered?.(socket, { ...report, ...(missed && { replayed: missed.length }) });
    const send = (socket as { packet?: (packet: { type: number; data: unknown[] }) => void })
      .packet;
    for (const data of missed ?? []) send?.call(socket, { type: EVENT, data });
  });

  io.use((socket, next) => {
    const pid = (socket as { pid?: unknown }).pid;
    let userId: string | undefined;
    const forget = () => {
      if (userId !== undefined && typeof pid === "string" && sockets.get(socket.id) === socket)
        away?.left(pid, userId, sync.groupsOfConnection(socket.id));
      sockets.delete(socket.id);
      socket.conn.off("close", forget);
      sync.disconnect(socket.id);
    };
    // What its restore found, taken now whatever happens next.
    const restored = typeof pid === "string" ? away?.recovered(pid) : undefined;
    (async () => {
      userId = await options.userIdOf(socket);
      if (restored !== undefined && restored.userId !== userId)
        throw new Error("the recovered session belongs to another user");
      if (socket.conn.readyState !== "open") throw new Error("the connection closed");
      sockets.set(socket.id, socket);
      // A socket refused by a later middleware gets no "disconnect"; its transport's close ends it.
      socket.once("disconnect", forget);
      socket.conn.once("close", forget);
      await sync.connect(socket.id, userId);
      if (restored === undefined) return;
      // A group revoked between the restore's check and now: Socket.IO put it back, take it out.
      const recovered: string[] = [];
      const lost = [...restored.lost];
      for (const group of restored.recovered) {
        if (sync.isInGroup(socket.id, group)) recovered.push(group);
        else {
          lost.push(group);
          await socket.leave(room(group));
        }
      }
      // Told once connected: Socket.IO delivers nothing to a socket still in its middlewares.
      reports.set(socket, { recovered, lost: lost.sort() });
    })().then(
      () => next(),
      (error: unknown) => {
        forget();
        if (typeof pid === "string") away?.forget(pid);
        next(error instanceof Error ? error : new Error(String(error)));
      },
    );
  });
  return sync;
}

/**
 * The sockets that may recover, and the store check of each that does. Socket.IO restores a
 * socket's rooms and replays its missed packets before any middleware runs, so the check is made
 * in the adapter's `restoreSession`: the rooms of groups the user lost, or whose membership
 * changed (a revoke and a grant while away), are taken out of the session first, and with them
 * their missed packets.
 */
class Recoveries {
  readonly #away = new Map<string, Away>();
  readonly #byUser = new Map<string, Set<Away>>();
  readonly #reports = new Map<string, RecoveryReport & { userId: string }>();
  readonly #missed = new Map<string, Missed>();
  readonly #maxMs: number;

  constructor(
    recovery: Recovery,
    readonly room: (group: string) => string,
    readonly options: Pick<SocketIoBindingOptions<SocketIoSocket>, "store" | "onError">,
  ) {
    this.#maxMs = recovery.maxDisconnectionDuration ?? 120_000;
  }

  /** Wraps the adapter's `restoreSession` with the store check. */
  guard(adapter: unknown): void {
    const target = adapter as RecoveryAdapter | undefined;
    if (typeof target?.restoreSession !== "function")
      throw new MembershipError(
        "INVALID_ARGUMENT",
        "connectionStateRecovery needs an adapter with restoreSession",
      );
    const restore = target.restoreSession.bind(target);
    target.restoreSession = async (pid, offset) => {
      for (const [old, missed] of this.#missed)
        if (missed.at < Date.now() - 60_000) this.forget(old);
      const lost = await this.#check(pid);
      if (lost === undefined) return null; // not ours, or not provably safe: a fresh connection
      if (lost.length > 0) {
        // Only an adapter whose sessions are at hand can be filtered; any other starts afresh.
        const session = target.sessions?.get(pid);
        if (session === undefined) return null;
        const rooms = new Set(lost.map(this.room));
        session.rooms = session.rooms.filter((r) => !rooms.has(r));
      }
      const session = await restore(pid, offset);
      if (session === null) {
        this.#reports.delete(pid);
        return null;
      }
      // Socket.IO would write the missed packets now, before any middleware has authenticated
      // the client. The in-memory adapter's are sent once it is connected instead (see missed).
      if (target.packets === undefined) return session;
      this.#missed.set(pid, { adapter: target, offset, rooms: session.rooms, at: Date.now() });
      return { ...session, missedPackets: [] };
    };
  }

  /**
   * The packets a recovered socket missed, computed when it connects (its middlewares passed,
   * its rooms checked): those of the rooms it was given back and is still in (`current`) after
   * its offset, including what was broadcast while its middlewares ran (Socket.IO's own restore
   * would have lost those). `undefined` when Socket.IO sent them itself.
   */
  missed(pid: string, current: ReadonlySet<string>): unknown[][] | undefined {
    const missed = this.#missed.get(pid);
    this.#missed.delete(pid);
    const packets = missed?.adapter.packets;
    if (missed === undefined || packets === undefined) return undefined;
    const rooms = missed.rooms.filter((room) => current.has(room));
    const start = packets.findIndex((packet) => packet.id === missed.offset);
    const out: unknown[][] = [];
    for (let i = start + 1; start >= 0 && i < packets.length; i++) {
      const { opts, data } = packets[i] as (typeof packets)[number];
      const included = opts.rooms.size === 0 || rooms.some((room) => opts.rooms.has(room));
      const excluded = rooms.some((room) => opts.except?.has(room));
      if (included && !excluded) out.push(data);
    }
    return out;
  }

  /** A socket disconnected: it may come back within the recovery window. */
  left(pid: string, userId: string, groups: string[]): void {
    this.#drop(pid);
    const timer = setTimeout(() => this.#drop(pid), this.#maxMs + 1_000);
    timer.unref();
    const entry: Away = { pid, userId, groups, changed: new Set(), timer };
    this.#away.set(pid, entry);
    const ofUser = this.#byUser.get(userId) ?? new Set();
    if (ofUser.size === 0) this.#byUser.set(userId, ofUser);
    ofUser.add(entry);
  }

  /** A change from the store: the group's missed packets are not the user's to recover. */
  changed(change: MembershipChange): void {
    if (change.type === "resync") {
      for (const entry of this.#away.values()) entry.changed = "all";
      return;
    }
    for (const entry of this.#byUser.get(change.userId) ?? [])
      if (entry.changed !== "all") entry.changed.add(change.group);
  }

  /** Forgets what the restore of `pid` kept (its connection was refused). */
  forget(pid: string): void {
    this.#missed.delete(pid);
    this.#reports.delete(pid);
  }

  /** What the socket of `pid` recovered, once (after its restore). */
  recovered(pid: string): (RecoveryReport & { userId: string }) | undefined {
    const report = this.#reports.get(pid);
    this.#reports.delete(pid);
    return report;
  }

  /** The groups `pid` lost while away; `undefined` when it may not recover at all. */
  async #check(pid: string): Promise<string[] | undefined> {
    const entry = this.#away.get(pid);
    if (entry === undefined || entry.changed === "all") {
      this.#drop(pid);
      return undefined;
    }
    let now: Set<string>;
    try {
      // Changes that arrive during the read are still recorded: the entry is dropped after it.
      now = new Set((await this.options.store.groupsOf(entry.userId)).map((m) => m.group));
    } catch (error) {
      this.options.onError?.(error);
      return undefined;
    } finally {
      this.#drop(pid);
    }
    const changed = entry.changed as Set<string> | "all";
    if (changed === "all") return undefined; // a resync during the read
    const lost = entry.groups.filter((g) => !now.has(g) || changed.has(g));
    const recovered = entry.groups.filter((g) => now.has(g) && !changed.has(g));
    this.#reports.set(pid, { recovered, lost, userId: entry.userId });
    return lost;
  }

  #drop(pid: string): void {
    const entry = this.#away.get(pid);
    if (entry === undefined) return;
    clearTimeout(entry.timer);
    this.#away.delete(pid);
    const ofUser = this.#byUser.get(entry.userId);
    ofUser?.delete(entry);
    if (ofUser?.size === 0) this.#byUser.delete(entry.userId);
  }
}
