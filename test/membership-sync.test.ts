import { afterEach, describe, expect, it, vi } from "vitest";
import {
  InMemoryMembershipStore,
  type Membership,
  type MembershipChange,
  MembershipError,
  MembershipSync,
} from "../adapters/index.js";
import { RecordingHub } from "./support/recording-hub.js";

/**
 * An in-memory store whose groupsOf takes its snapshot at once but, until released, answers
 * only when released: a read that is still in flight while other things happen.
 */
class HeldReadStore extends InMemoryMembershipStore {
  readonly reads: Array<() => void> = [];
  #holding = true;
  override async groupsOf(userId: string): Promise<Membership[]> {
    const snapshot = await super.groupsOf(userId);
    if (this.#holding) await new Promise<void>((release) => this.reads.push(release));
    return snapshot;
  }
  releaseAll() {
    this.#holding = false;
    for (const release of this.reads.splice(0)) release();
  }
}

/**
 * A store whose watchers hear only what the test announces: changes made on it directly reach no
 * one, as another process's changes reach a process that is cut off.
 */
class AnnouncedStore extends InMemoryMembershipStore {
  readonly #listeners: Array<(change: MembershipChange) => void> = [];
  override watch(listener: (change: MembershipChange) => void): () => void {
    this.#listeners.push(listener);
    return () => {};
  }
  announce(change: MembershipChange) {
    for (const listener of this.#listeners) listener(change);
  }
}

const syncs: MembershipSync[] = [];
function setup<S extends InMemoryMembershipStore>(store: S) {
  const hub = new RecordingHub();
  const sync = new MembershipSync({ store, hub });
  syncs.push(sync);
  return { store, hub, sync };
}
afterEach(async () => {
  vi.useRealTimers();
  await Promise.all(syncs.splice(0).map((sync) => sync.close()));
});

/** Lets pending promise continuations run. */
const settle = () => new Promise((resolve) => setImmediate(resolve));

describe("MembershipSync", () => {
  it("rehydrates a connection's groups from the store on connect", async () => {
    const { store, hub, sync } = setup(new InMemoryMembershipStore());
    await store.addToGroup("alice", "b");
    await store.addToGroup("alice", "a");
    await store.addToGroup("bob", "c");
    expect(await sync.connect("c1", "alice")).toEqual(["a", "b"]);
    expect(hub.calls.sort()).toEqual(["join c1 a connect", "join c1 b connect"]);
    expect(sync.connectionsOf("alice")).toEqual(["c1"]);
    expect(sync.isInGroup("c1", "a")).toBe(true);
    expect(sync.isInGroup("c1", "c")).toBe(false);
  });

  it("reads the store once per user: concurrent connects share it, later ones copy a sibling", async () => {
    const { store, sync } = setup(new InMemoryMembershipStore());
    await store.addToGroup("alice", "a");
    const groupsOf = vi.spyOn(store, "groupsOf");
    const results = await Promise.all([
      sync.connect("c1", "alice"),
      sync.connect("c2", "alice"),
      sync.connect("c3", "bob"),
    ]);
    expect(results).toEqual([["a"], ["a"], []]);
    expect(groupsOf.mock.calls).toEqual([["alice"], ["bob"]]);
    // A later connect copies a settled sibling (kept current by watch) instead of reading.
    await store.addToGroup("alice", "b");
    await Promise.resolve();
    await vi.waitFor(() => expect(sync.groupsOfConnection("c1")).toEqual(["a", "b"]));
    const calls = groupsOf.mock.calls.length;
    expect(await sync.connect("c4", "alice")).toEqual(["a", "b"]);
    expect(groupsOf).toHaveBeenCalledTimes(calls);
    // Once the user is gone, the next connect reads again.
    for (const c of ["c1", "c2", "c4"]) sync.disconnect(c);
    expect(await sync.connect("c5", "alice")).toEqual(["a", "b"]);
    expect(groupsOf).toHaveBeenCalledTimes(calls + 1);
  });

  it("grant and revoke reach every live connection of the user, and only theirs", async () => {
    const { store, hub, sync } = setup(new InMemoryMembershipStore());
    await sync.connect("a1", "alice");
    await sync.connect("a2", "alice");
    await sync.connect("b1", "bob");
    await sync.grant("alice", "room");
    expect(await store.isMember("alice", "room")).toBe(true);
    expect(hub.calls).toEqual(["join a1 room granted", "join a2 room granted"]);
    hub.calls.length = 0;
    expect(await sync.revoke("alice", "room")).toBe(true);
    expect(await store.isMember("alice", "room")).toBe(false);
    expect(hub.calls).toEqual(["leave a1 room revoked", "leave a2 room revoked"]);
    expect(await sync.revoke("alice", "room")).toBe(false);
    expect(hub.calls).toHaveLength(2);
    expect(hub.of("b1")).toEqual([]);
  });

  it("answers a resync by re-reading every connected user, a few at once, and matching the store", async () => {
    const store = new AnnouncedStore();
    const hub = new RecordingHub();
    const sync = new MembershipSync({ store, hub, resyncConcurrency: 3 });
    syncs.push(sync);
    const users = Array.from({ length: 10 }, (_, i) => `user${i}`);
    for (const user of users) await store.addToGroup(user, "lobby");
    for (const user of users) await sync.connect(`${user}-c`, user);
    await store.removeFromGroup("user0", "lobby");
    await store.addToGroup("user9", "vip");
    expect(hub.of("user0-c")).toEqual(["lobby"]); // missed, as a cut-off process would

    let reading = 0;
    let most = 0;
    const groupsOf = store.groupsOf.bind(store);
    vi.spyOn(store, "groupsOf").mockImplementation(async (userId) => {
      most = Math.max(most, ++reading);
      await settle();
      reading--;
      return groupsOf(userId);
    });
    store.announce({ type: "resync" });
    await vi.waitFor(() => expect(hub.of("user9-c")).toEqual(["lobby", "vip"]));
    expect(hub.of("user0-c")).toEqual([]);
    expect(hub.calls).toContain("leave user0-c lobby revoked");
    expect(store.groupsOf).toHaveBeenCalledTimes(10);
    expect(most).toBe(3);
  });

  it("a revoke announced before its delete is not undone by a read in between", async () => {
    const store = new AnnouncedStore();
    const { hub, sync } = setup(store);
    await store.addToGroup("alice", "room");
    await sync.connect("c1", "alice");
    // The Azure store's revoke: announce (pending), delete, confirm. A read between the
    // announcement and the delete still sees the row.
    store.announce({ type: "removed", userId: "alice", group: "room", pending: true });
    await settle();
    await settle();
    expect(hub.of("c1")).toEqual([]);
    await store.removeFromGroup("alice", "room");
    store.announce({ type: "removed", userId: "alice", group: "room" });
    await settle();
    expect(hub.calls).toEqual(["join c1 room connect", "leave c1 room revoked"]);
    // A grant that follows is applied as usual.
    await store.addToGroup("alice", "room");
    store.announce({ type: "added", userId: "alice", group: "room" });
    await vi.waitFor(() => expect(hub.of("c1")).toEqual(["room"]));
  });

  it("a pending revoke that is never confirmed (it failed) is settled by a read after pendingRevokeMs", async () => {
    const store = new AnnouncedStore();
    const hub = new RecordingHub();
    const sync = new MembershipSync({ store, hub, pendingRevokeMs: 200 });
    syncs.push(sync);
    await store.addToGroup("alice", "room");
    await sync.connect("c1", "alice");
    store.announce({ type: "removed", userId: "alice", group: "room", pending: true });
    await settle();
    expect(hub.of("c1")).toEqual([]); // access dropped at once
    await vi.waitFor(() => expect(hub.of("c1")).toEqual(["room"]), { timeout: 2_000 });
    expect(hub.calls.at(-1)).toBe("join c1 room granted");
  });

  it("keeps the reasons of two pairs apart whatever their names hold", async () => {
    // `a\0b` in `c` and `a` in `b\0c` once shared the key `a\0b\0c`.
    const { store, hub, sync } = setup(new InMemoryMembershipStore());
    await store.addToGroup("a\u0000b", "c");
    await store.addToGroup("a", "b\u0000c");
    await sync.connect("left-one", "a\u0000b");
    await sync.connect("revoked-one", "a");
    hub.calls.length = 0;
    const leaving = sync.revoke("a\u0000b", "c", "left");
    // Another process revokes the other pair while this one's own revoke is in flight.
    await store.removeFromGroup("a", "b\u0000c");
    await leaving;
    expect(hub.calls.sort()).toEqual([
      "leave left-one c left",
      "leave revoked-one b\u0000c revoked",
    ]);
  });

  it("tells the hub a user left by themselves", async () => {
    const { hub, sync } = setup(new InMemoryMembershipStore());
    await sync.connect("a1", "alice");
    await sync.grant("alice", "lobby");
    expect(await sync.revoke("alice", "lobby", "left")).toBe(true);
    expect(hub.calls.at(-1)).toBe("leave a1 lobby left");
  });

  it("tells every hub bound to the same store the reason of one revoke (two endpoints, one process)", async () => {
    const store = new InMemoryMembershipStore();
    const ws = setup(store);
    const signalr = setup(store);
    await ws.sync.connect("w1", "alice");
    await signalr.sync.connect("s1", "alice");
    await store.addToGroup("alice", "lobby");
    await expect.poll(() => signalr.hub.of("s1")).toEqual(["lobby"]);
    expect(await ws.sync.revoke("alice", "lobby", "left")).toBe(true);
    expect(ws.hub.calls.at(-1)).toBe("leave w1 lobby left");
    expect(signalr.hub.calls.at(-1)).toBe("leave s1 lobby left");
    // The next revoke, made on the store alone, is an admin's again.
    await store.addToGroup("alice", "lobby");
    await expect.poll(() => signalr.hub.of("s1")).toEqual(["lobby"]);
    await store.removeFromGroup("alice", "lobby");
    expect(signalr.hub.calls.at(-1)).toBe("leave s1 lobby revoked");
  });

  it("applies changes made directly on the store (another process's, via watch), once", async () => {
    const { store, hub, sync } = setup(new InMemoryMembershipStore());
    await sync.connect("a1", "alice");
    for (const step of [
      () => store.addToGroup("alice", "room"),
      () => store.addToGroup("alice", "room"),
      () => store.removeFromGroup("alice", "room"),
      () => store.addToGroup("alice", "other"),
      () => store.removeUser("alice"),
    ]) {
      await step();
      await settle();
    }
    expect(hub.calls).toEqual([
      "join a1 room granted",
      "leave a1 room revoked",
      "join a1 other granted",
      "leave a1 other revoked",
    ]);
  });

  it("a revoke that lands while connect is reading leaves the connection out of the group", async () => {
    const { store, hub, sync } = setup(new HeldReadStore());
    await store.addToGroup("alice", "secret");
    await store.addToGroup("alice", "kept");
    const first = sync.connect("a1", "alice");
    await settle();
    expect(store.reads).toHaveLength(1); // the read has its snapshot, with "secret" in it
    const revoking = sync.revoke("alice", "secret");
    await settle();
    const second = sync.connect("a2", "alice"); // joins the read in flight
    store.releaseAll();
    expect(await revoking).toBe(true);
    expect(await first).toEqual(["kept"]);
    expect(await second).toEqual(["kept"]);
    expect(hub.calls.filter((c) => c.includes("secret"))).toEqual([]);
    expect(hub.of("a1")).toEqual(["kept"]);
    expect(hub.of("a2")).toEqual(["kept"]);
  });

  it("a grant that lands while connect is reading is not lost", async () => {
    const { store, hub, sync } = setup(new HeldReadStore());
    const connecting = sync.connect("a1", "alice");
    await settle();
    expect(store.reads).toHaveLength(1); // the read has its snapshot, without "new"
    const granting = sync.grant("alice", "new");
    await settle();
    store.releaseAll();
    await granting;
    expect(await connecting).toEqual(["new"]);
    expect(hub.of("a1")).toEqual(["new"]);
    await store.removeFromGroup("alice", "new");
    expect(hub.of("a1")).toEqual([]);
  });

  it("leaves a group when its membership expires, and honours a later expiry", async () => {
    vi.useFakeTimers();
    const { store, hub, sync } = setup(new InMemoryMembershipStore());
    await store.addToGroup("alice", "brief", { expiresAt: new Date(Date.now() + 10_000) });
    await sync.connect("a1", "alice");
    await sync.connect("a2", "alice");
    await sync.grant("alice", "extended", { expiresAt: new Date(Date.now() + 1_000) });
    await sync.grant("alice", "extended", { expiresAt: new Date(Date.now() + 60_000) });
    await vi.advanceTimersByTimeAsync(10_000);
    expect(hub.calls.filter((c) => c.startsWith("leave"))).toEqual([
      "leave a1 brief expired",
      "leave a2 brief expired",
    ]);
    expect(sync.groupsOfConnection("a1")).toEqual(["extended"]);
    await vi.advanceTimersByTimeAsync(50_000);
    expect(sync.groupsOfConnection("a1")).toEqual([]);
    expect(hub.of("a2")).toEqual([]);
    expect(await sync.connect("a3", "alice")).toEqual([]);
  });

  it("expires memberships far in the future without overflowing the timer", async () => {
    vi.useFakeTimers();
    const { hub, sync } = setup(new InMemoryMembershipStore());
    await sync.connect("a1", "alice");
    const days = (n: number) => n * 86_400_000;
    await sync.grant("alice", "long", { expiresAt: new Date(Date.now() + days(30)) });
    await vi.advanceTimersByTimeAsync(days(29));
    expect(hub.of("a1")).toEqual(["long"]);
    await vi.advanceTimersByTimeAsync(days(1) + 1);
    expect(hub.of("a1")).toEqual([]);
  });

  it("does not call the hub for a connection that is gone, and survives a hub that throws", async () => {
    const store = new InMemoryMembershipStore();
    const errors: unknown[] = [];
    const hub = new RecordingHub();
    const sync = new MembershipSync({
      store,
      hub: {
        join: (c, g, r) => hub.join(c, g, r),
        leave: () => {
          throw new Error("socket already closed");
        },
      },
      onError: (error) => errors.push(error),
    });
    syncs.push(sync);
    await sync.connect("a1", "alice");
    await sync.connect("a2", "alice");
    await sync.grant("alice", "room");
    sync.disconnect("a1");
    sync.disconnect("a1");
    expect(await sync.revoke("alice", "room")).toBe(true);
    await settle();
    expect(errors).toHaveLength(1); // a2's leave threw; a1 was not asked
    expect(sync.connectionsOf("alice")).toEqual(["a2"]);
    expect(sync.isInGroup("a2", "room")).toBe(false);
  });

  it("fails connect when the store fails, and registers nothing", async () => {
    const { store, sync } = setup(new InMemoryMembershipStore());
    const outage = new MembershipError("STORE_UNAVAILABLE", "down");
    vi.spyOn(store, "groupsOf").mockRejectedValueOnce(outage);
    await expect(sync.connect("a1", "alice")).rejects.toBe(outage);
    expect(sync.connectionsOf("alice")).toEqual([]);
    expect(await sync.connect("a1", "alice")).toEqual([]);
  });

  it("rejects a duplicate connection id and a bad user id", async () => {
    const { sync } = setup(new InMemoryMembershipStore());
    await sync.connect("a1", "alice");
    await expect(sync.connect("a1", "bob")).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
    await expect(sync.connect("b1", "")).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
    expect(sync.connectionsOf("bob")).toEqual([]);
  });

  it("stops applying changes once closed", async () => {
    const { store, hub, sync } = setup(new InMemoryMembershipStore());
    await sync.connect("a1", "alice");
    await sync.close();
    await store.addToGroup("alice", "room");
    expect(hub.calls).toEqual([]);
    await expect(sync.grant("alice", "room")).rejects.toMatchObject({ code: "CLOSED" });
  });
});
