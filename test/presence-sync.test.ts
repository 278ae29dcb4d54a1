import { afterEach, describe, expect, it, vi } from "vitest";
import {
  InMemoryMembershipStore,
  MembershipSync,
  MemoryPresence,
  type PresenceEvent,
} from "../adapters/index.js";
import { RecordingHub } from "./support/recording-hub.js";

/** Two bindings of one process (a ws and a SignalR endpoint) sharing one presence. */
function setUp() {
  const store = new InMemoryMembershipStore();
  const presence = new MemoryPresence();
  const events: PresenceEvent[] = [];
  presence.subscribe((event) => events.push(event));
  const ws = new MembershipSync({ store, hub: new RecordingHub(), presence });
  const signalr = new MembershipSync({ store, hub: new RecordingHub(), presence });
  return { store, presence, events, ws, signalr };
}
/** Reports go out once per turn, after it. */
const settled = () => new Promise((resolve) => setImmediate(resolve));

describe("MembershipSync with presence", () => {
  let close: Array<() => Promise<void>> = [];
  afterEach(async () => {
    vi.useRealTimers();
    await Promise.all(close.map((c) => c()));
    close = [];
  });

  it("counts a user once over its connections on every binding, and tells once", async () => {
    const { store, presence, events, ws, signalr } = setUp();
    close.push(
      () => ws.close(),
      () => signalr.close(),
    );
    await store.addToGroup("ann", "room");
    await store.addToGroup("bob", "room");
    await ws.connect("w1", "ann");
    await ws.connect("w2", "ann");
    await signalr.connect("s1", "ann");
    await signalr.connect("s2", "bob");
    await settled();
    expect(await presence.count("room")).toEqual({ users: 2, connections: 4 });
    expect(await presence.online("room")).toEqual({ users: ["ann", "bob"] });
    expect(events).toEqual([
      { group: "room", userId: "ann", online: true },
      { group: "room", userId: "bob", online: true },
    ]);
    ws.disconnect("w1");
    ws.disconnect("w2");
    await settled();
    expect(await presence.count("room")).toEqual({ users: 2, connections: 2 });
    signalr.disconnect("s1");
    await settled();
    expect(await presence.isOnline("ann")).toBe(false);
    expect(events.at(-1)).toEqual({ group: "room", userId: "ann", online: false });
    expect(events).toHaveLength(3);
  });

  it("a revoke, a grant and an expiry move the user in the group's presence", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "Date"] });
    const { store, presence, events, ws, signalr } = setUp();
    close.push(
      () => ws.close(),
      () => signalr.close(),
    );
    await store.addToGroup("ann", "room");
    await ws.connect("w1", "ann");
    await signalr.connect("s1", "ann");
    await settled();
    await ws.revoke("ann", "room");
    await settled();
    // Both bindings' connections left: the user is online, but not in the group.
    expect(await presence.count("room")).toEqual({ users: 0, connections: 0 });
    expect(await presence.isOnline("ann")).toBe(true);
    await signalr.grant("ann", "ops", { expiresAt: new Date(Date.now() + 60_000) });
    await vi.waitFor(async () =>
      expect(await presence.count("ops")).toEqual({ users: 1, connections: 2 }),
    );
    await vi.advanceTimersByTimeAsync(60_001);
    await settled();
    expect(await presence.count("ops")).toEqual({ users: 0, connections: 0 });
    expect(events).toEqual([
      { group: "room", userId: "ann", online: true },
      { group: "room", userId: "ann", online: false },
      { group: "ops", userId: "ann", online: true },
      { group: "ops", userId: "ann", online: false },
    ]);
  });

  it("a closed binding takes its connections out; the other's stay", async () => {
    const { store, presence, ws, signalr } = setUp();
    close.push(() => signalr.close());
    await store.addToGroup("ann", "room");
    await ws.connect("w1", "ann");
    await signalr.connect("s1", "ann");
    await settled();
    await ws.close();
    expect(await presence.count("room")).toEqual({ users: 1, connections: 1 });
  });
});
