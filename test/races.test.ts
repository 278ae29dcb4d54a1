import { afterEach, describe, expect, it, vi } from "vitest";
import {
  type AddToGroupOptions,
  InMemoryMembershipStore,
  type MembershipStore,
  MembershipSync,
} from "../adapters/index.js";
import { azureStore, tableNameOf } from "./support/azure.js";
import { RecordingHub } from "./support/recording-hub.js";

/** Reproduce a failure with RACE_SEED=<seed printed by the failing test>. */
const SEED = Number(process.env.RACE_SEED ?? Date.now() % 1_000_000);

/** mulberry32: a small, seeded PRNG. */
function prng(seed: number) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Harness {
  store: MembershipStore;
  /** A second writer, as another process would be: changes reach the sync only through watch. */
  other: MembershipStore;
  /** A random pause inside a round, so concurrent operations interleave differently. */
  pause(random: () => number): Promise<void>;
  /** Until every change has reached the sync and every due expiry has fired. */
  settle(): Promise<void>;
  /** Between rounds: lets time pass (expiries). */
  tick(random: () => number): Promise<void>;
  expiresAt(random: () => number): Date;
}

const USERS = ["ann", "Ann", "bo"];
const GROUPS = ["g", "G", "h/#?", "😀"];

async function race(h: Harness, rounds: number, checkEvery: number) {
  const random = prng(SEED);
  const pick = <T>(items: readonly T[]) => items[Math.floor(random() * items.length)] as T;
  const hub = new RecordingHub();
  const errors: unknown[] = [];
  const sync = new MembershipSync({ store: h.store, hub, onError: (e) => errors.push(e) });
  const live = new Map<string, string>();
  let ids = 0;
  let checks = 0;
  let operations = 0;
  const options = (): AddToGroupOptions | undefined =>
    random() < 0.3 ? { expiresAt: h.expiresAt(random) } : undefined;

  const operation = (): (() => Promise<unknown>) => {
    const user = pick(USERS);
    const group = pick(GROUPS);
    const r = random();
    if (r < 0.22) {
      const id = `c${ids++}`;
      live.set(id, user);
      return () => sync.connect(id, user);
    }
    if (r < 0.3) {
      const id = pick([...live.keys(), "none"]);
      return async () => {
        live.delete(id);
        sync.disconnect(id);
      };
    }
    const expiry = options();
    if (r < 0.48) return () => sync.grant(user, group, expiry);
    if (r < 0.62) return () => sync.revoke(user, group);
    if (r < 0.82) return () => h.other.addToGroup(user, group, expiry);
    if (r < 0.92) return () => h.other.removeFromGroup(user, group);
    return () => h.other.removeUser(user);
  };

  const check = async (round: number) => {
    await h.settle();
    checks++;
    expect(errors, `seed ${SEED}, round ${round}`).toEqual([]);
    for (const [id, user] of live) {
      const stored = (await h.store.groupsOf(user)).map((m) => m.group);
      const where = `seed ${SEED}, round ${round}, connection ${id} of ${user}`;
      expect(sync.groupsOfConnection(id), where).toEqual(stored);
      expect(hub.of(id), where).toEqual(stored);
    }
  };

  for (let round = 1; round <= rounds; round++) {
    const batch = Array.from({ length: 1 + Math.floor(random() * 4) }, operation);
    operations += batch.length;
    const results = await Promise.allSettled(
      batch.map(async (run) => {
        await h.pause(random);
        await run();
      }),
    );
    for (const result of results) if (result.status === "rejected") throw result.reason;
    if (round % checkEvery === 0) await check(round);
    await h.tick(random);
  }
  await check(rounds);
  await sync.close();
  return { rounds, checks, operations };
}

/** Wraps a store so every call yields a random number of microtasks before and after it. */
function jittery(store: InMemoryMembershipStore, random: () => number): MembershipStore {
  const yields = async () => {
    for (let i = Math.floor(random() * 6); i > 0; i--) await Promise.resolve();
  };
  const wrap =
    <A extends unknown[], R>(call: (...args: A) => Promise<R>) =>
    async (...args: A) => {
      await yields();
      const result = await call(...args);
      await yields();
      return result;
    };
  return {
    addToGroup: wrap(store.addToGroup.bind(store)),
    addMany: wrap(store.addMany.bind(store)),
    removeFromGroup: wrap(store.removeFromGroup.bind(store)),
    isMember: wrap(store.isMember.bind(store)),
    groupsOf: wrap(store.groupsOf.bind(store)),
    countMembers: wrap(store.countMembers.bind(store)),
    removeUser: wrap(store.removeUser.bind(store)),
    deleteGroup: wrap(store.deleteGroup.bind(store)),
    membersOf: (group) => store.membersOf(group),
    memberships: () => store.memberships(),
    watch: (listener) => store.watch(listener),
    close: () => store.close(),
  };
}

afterEach(() => {
  vi.useRealTimers();
});

describe(`randomized races (seed ${SEED})`, () => {
  it("in memory: 2,000 rounds, every connection ends in exactly its stored groups", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "Date"] });
    const inner = new InMemoryMembershipStore();
    const random = prng(SEED ^ 0xabcdef);
    const flush = async () => {
      for (let i = 0; i < 50; i++) await Promise.resolve();
    };
    const stats = await race(
      {
        store: jittery(inner, random),
        other: inner,
        pause: async (r) => {
          for (let i = Math.floor(r() * 8); i > 0; i--) await Promise.resolve();
        },
        settle: async () => {
          await flush();
          await vi.advanceTimersByTimeAsync(0);
          await flush();
        },
        tick: async (r) => {
          await vi.advanceTimersByTimeAsync(Math.floor(r() * 20));
        },
        expiresAt: (r) => new Date(Date.now() + 1 + Math.floor(r() * 60)),
      },
      2_000,
      1,
    );
    console.log(`races in memory (seed ${SEED}): ${JSON.stringify(stats)}`);
  });

  it("on Azurite, with a second store instance: 1,000 rounds", { timeout: 180_000 }, async () => {
    const store = azureStore({ pollIntervalMs: 25 });
    const other = azureStore({ tableName: tableNameOf(store) });
    const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
    try {
      const stats = await race(
        {
          store,
          other,
          pause: async (r) => {
            await sleep(Math.floor(r() * 4));
          },
          settle: async () => {
            await sleep(700);
          },
          tick: async () => {},
          expiresAt: (r) => new Date(Date.now() + 50 + Math.floor(r() * 250)),
        },
        1_000,
        50,
      );
      console.log(`races on Azurite (seed ${SEED}): ${JSON.stringify(stats)}`);
    } finally {
      await store.close();
      await other.close();
    }
  });
});
