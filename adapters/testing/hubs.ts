import { afterEach, describe, expect, it } from "vitest";
import {
  type AddToGroupOptions,
  type Membership,
  MembershipError,
  type MembershipStore,
} from "../contract.js";
import { InMemoryMembershipStore } from "../stores/memory.js";

/** A client of the hub under test, as a person would see it. */
export interface HarnessConnection {
  /** What the client received from group broadcasts, in order. */
  readonly received: ReadonlyArray<{ group: string; text: string }>;
  /** Closes the client's connection. */
  close(): Promise<void>;
}

/** A hub under test, with its binding on `store`, as its application would drive it. */
export interface HubHarness {
  /**
   * Opens a client connection for `userId` and resolves once the hub accepted it (its groups are
   * rehydrated); rejects if the hub refused it. `onOpening` is called when the client has asked,
   * before the hub answered (to close it during rehydration, say).
   */
  connect(
    userId: string,
    onOpening?: (close: () => Promise<void>) => void,
  ): Promise<HarnessConnection>;
  /** Sends `text` to `group`, as the application does: only its members may receive it. */
  broadcast(group: string, text: string): Promise<void>;
  grant(userId: string, group: string, options?: AddToGroupOptions): Promise<void>;
  revoke(userId: string, group: string): Promise<boolean>;
  /** Stops the hub and its binding (not the store). */
  close(): Promise<void>;
}

/** How to get hubs for {@link testHubBinding}: one per test, on the store given. */
export interface HubHarnessFactory {
  create(store: MembershipStore): Promise<HubHarness>;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A store whose `groupsOf` waits for `release()` while `holding`: a slow read in flight. */
class SlowReads extends InMemoryMembershipStore {
  holding = false;
  readonly #waiting: Array<() => void> = [];
  failing: MembershipError | undefined;
  override async groupsOf(userId: string): Promise<Membership[]> {
    if (this.failing) throw this.failing;
    const snapshot = await super.groupsOf(userId);
    if (this.holding) await new Promise<void>((resolve) => this.#waiting.push(resolve));
    return snapshot;
  }
  get waiting(): number {
    return this.#waiting.length;
  }
  release(): void {
    this.holding = false;
    for (const resolve of this.#waiting.splice(0)) resolve();
  }
}

/**
 * The conformance suite of a hub binding: any hub (`ws`, Socket.IO, a SignalR-style server, a
 * managed service) bound to a store with `MembershipSync` must keep its clients in exactly their
 * stored groups. Judged by what clients receive, never by the binding's internals:
 *
 * ```ts
 * import { testHubBinding } from "hub-membership/testing";
 * testHubBinding("my hub", { create: async (store) => myHarness(store) });
 * ```
 */
export function testHubBinding(name: string, factory: HubHarnessFactory): void {
  describe(`hub binding conformance: ${name}`, { timeout: 30_000 }, () => {
    const hubs: HubHarness[] = [];
    const open = async (store: MembershipStore) => {
      const hub = await factory.create(store);
      hubs.push(hub);
      return hub;
    };
    afterEach(async () => {
      await Promise.all(hubs.splice(0).map((hub) => hub.close()));
    });
    /** Broadcasts a probe to `group` and returns who got it, after a moment for stragglers. */
    const probe = async (hub: HubHarness, group: string, clients: HarnessConnection[]) => {
      const text = `probe ${Math.random()}`;
      await hub.broadcast(group, text);
      await sleep(150);
      return clients.map((c) => c.received.some((m) => m.group === group && m.text === text));
    };

    it("rehydrates a connection's stored groups on connect, and nothing else", async () => {
      const store = new InMemoryMembershipStore();
      await store.addToGroup("alice", "Sports");
      await store.addToGroup("alice", "news/#?");
      await store.addToGroup("bob", "private");
      const hub = await open(store);
      const alice = await hub.connect("alice");
      expect(await probe(hub, "Sports", [alice])).toEqual([true]);
      expect(await probe(hub, "news/#?", [alice])).toEqual([true]);
      expect(await probe(hub, "sports", [alice])).toEqual([false]);
      expect(await probe(hub, "private", [alice])).toEqual([false]);
    });

    it("a grant and a revoke reach every connection of the user, and only theirs", async () => {
      const store = new InMemoryMembershipStore();
      const hub = await open(store);
      const [a1, a2, bob] = [
        await hub.connect("alice"),
        await hub.connect("alice"),
        await hub.connect("bob"),
      ];
      await hub.grant("alice", "room");
      expect(await probe(hub, "room", [a1, a2, bob])).toEqual([true, true, false]);
      expect(await hub.revoke("alice", "room")).toBe(true);
      expect(await probe(hub, "room", [a1, a2, bob])).toEqual([false, false, false]);
    });

    it("a change made on the store by another process reaches the connections", async () => {
      const store = new InMemoryMembershipStore();
      const hub = await open(store);
      const alice = await hub.connect("alice");
      await store.addToGroup("alice", "room"); // as the admin script would, through watch
      await expect.poll(() => probe(hub, "room", [alice])).toEqual([true]);
      await store.removeFromGroup("alice", "room");
      await expect.poll(() => probe(hub, "room", [alice])).toEqual([false]);
    });

    it("a revoke during a slow rehydration is never undone by it", async () => {
      const store = new SlowReads();
      await store.addToGroup("alice", "room");
      const hub = await open(store);
      store.holding = true;
      const connecting = hub.connect("alice");
      await expect.poll(() => store.waiting).toBe(1); // the read saw "room"
      await store.removeFromGroup("alice", "room");
      store.release();
      const alice = await connecting;
      expect(await probe(hub, "room", [alice])).toEqual([false]);
    });

    it("a membership stops counting when it expires, without a reconnect", async () => {
      const store = new InMemoryMembershipStore();
      const hub = await open(store);
      const alice = await hub.connect("alice");
      await hub.grant("alice", "brief", { expiresAt: new Date(Date.now() + 600) });
      expect(await probe(hub, "brief", [alice])).toEqual([true]);
      await sleep(700);
      expect(await probe(hub, "brief", [alice])).toEqual([false]);
    });

    it("a connection closed during rehydration is forgotten, and the user connects again", async () => {
      const store = new SlowReads();
      await store.addToGroup("alice", "room");
      const hub = await open(store);
      store.holding = true;
      let closeEarly: (() => Promise<void>) | undefined;
      const first = hub
        .connect("alice", (close) => {
          closeEarly = close;
        })
        .then(
          () => "accepted",
          () => "refused",
        );
      await expect.poll(() => store.waiting).toBe(1);
      await closeEarly?.();
      store.release();
      await first; // either answer is fine: the client is gone
      const again = await hub.connect("alice");
      expect(await probe(hub, "room", [again])).toEqual([true]);
    });

    it("a store outage refuses the connection instead of admitting it with no groups", async () => {
      const store = new SlowReads();
      await store.addToGroup("alice", "room");
      const hub = await open(store);
      store.failing = new MembershipError("STORE_UNAVAILABLE", "the store is down");
      await expect(hub.connect("alice")).rejects.toThrow();
      store.failing = undefined;
      const alice = await hub.connect("alice");
      expect(await probe(hub, "room", [alice])).toEqual([true]);
    });
  });
}
