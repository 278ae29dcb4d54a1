import { MembershipError, type MembershipStore } from "../contract.js";
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

/** What the binding uses of a Socket.IO `Server` or `Namespace`. */
export interface SocketIoNamespace<S extends SocketIoSocket> {
  use(middleware: (socket: S, next: (error?: Error) => void) => void): unknown;
  readonly _opts?: { connectionStateRecovery?: unknown };
  readonly server?: { readonly _opts?: { connectionStateRecovery?: unknown } };
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
 * @returns the {@link MembershipSync} (`grant`, `revoke`, `isInGroup(socket.id, group)`, `close`).
 * @throws MembershipError `INVALID_ARGUMENT` when connection state recovery is on: it restores a
 * socket's rooms without asking the store, which would bring revoked groups back.
 */
export function bindSocketIo<S extends SocketIoSocket>(
  io: SocketIoNamespace<S>,
  options: SocketIoBindingOptions<S>,
): MembershipSync {
  if ((io._opts ?? io.server?._opts)?.connectionStateRecovery) {
    throw new MembershipError(
      "INVALID_ARGUMENT",
      "bindSocketIo cannot be used with connectionStateRecovery: recovered rooms bypass the store",
    );
  }
  const room = options.room ?? ((group: string) => group);
  // Sockets by id from the middleware on: they are not in the namespace until it completes.
  const sockets = new Map<string, S>();
  const sync = new MembershipSync({
    store: options.store,
    ...(options.onError && { onError: options.onError }),
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

  io.use((socket, next) => {
    const forget = () => {
      sockets.delete(socket.id);
      socket.conn.off("close", forget);
      sync.disconnect(socket.id);
    };
    (async () => {
      const userId = await options.userIdOf(socket);
      if (socket.conn.readyState !== "open") throw new Error("the connection closed");
      sockets.set(socket.id, socket);
      // A socket refused by a later middleware gets no "disconnect"; its transport's close ends it.
      socket.once("disconnect", forget);
      socket.conn.once("close", forget);
      await sync.connect(socket.id, userId);
    })().then(
      () => next(),
      (error: unknown) => {
        forget();
        next(error instanceof Error ? error : new Error(String(error)));
      },
    );
  });
  return sync;
}
