/**
 * The resume property (issue 25), on any history: random interleavings of send, grant, revoke,
 * expiry, disconnect and reconnect (to the same hub or the other one) against two real `bindWs`
 * hubs on one store and one shared history, with in-process sockets. A user never receives a
 * message sent outside its membership, and receives every message sent during it exactly once
 * and in order, or was told `recovered: false` (or `removed`) for that group.
 */
import { EventEmitter } from "node:events";
import type { IncomingMessage } from "node:http";
import fc from "fast-check";
import { expect, vi } from "vitest";
import type { MessageHistory, ResumeRequest } from "../../adapters/history/history.js";
import { bindWs, type WsHub } from "../../adapters/hubs/ws.js";
import { InMemoryMembershipStore, type MembershipChange } from "../../adapters/index.js";

class FakeSocket extends EventEmitter {
  readyState = 1;
  bufferedAmount = 0;
  constructor(readonly onFrame: (text: string) => void) {
    super();
  }
  send(data: Buffer | string): void {
    if (this.readyState === 1) this.onFrame(data.toString());
  }
  close(): void {
    if (this.readyState !== 1) return;
    this.readyState = 3;
    this.emit("close");
  }
  terminate(): void {
    this.close();
  }
  ping(): void {}
}

/** A store whose watchers can miss changes, as a feed's subscribers can, and then hear `resync`. */
class LossyStore extends InMemoryMembershipStore {
  #muted = false;
  readonly #listeners = new Set<(change: MembershipChange) => void>();
  override watch(listener: (change: MembershipChange) => void): () => void {
    this.#listeners.add(listener);
    const stop = super.watch((change) => {
      if (!this.#muted) listener(change);
    });
    return () => {
      this.#listeners.delete(listener);
      stop();
    };
  }
  async behindTheirBack(write: () => Promise<unknown>): Promise<void> {
    this.#muted = true;
    try {
      await write();
    } finally {
      this.#muted = false;
    }
  }
  resync(): void {
    for (const listener of this.#listeners) listener({ type: "resync" });
  }
}

class FakeServer extends EventEmitter {
  readonly options: { maxPayload?: number } = {};
  handleUpgrade(): void {}
}

type Action =
  | { type: "send"; hub: number; group: number; fast: boolean }
  | { type: "grant"; hub: number; user: number; group: number; expires: boolean }
  | { type: "revoke"; hub: number; user: number; group: number }
  | { type: "expire" }
  | { type: "missed"; user: number; group: number }
  | { type: "disconnect"; client: number }
  | { type: "reconnect"; client: number; hub: number; fast: boolean };

const USERS = ["u0", "u1"];
const GROUPS = ["g0", "g1"];
/** Clients: two devices of u0, one of u1. */
const CLIENTS = [0, 0, 1] as const;

const action: fc.Arbitrary<Action> = fc.oneof(
  {
    weight: 5,
    arbitrary: fc.record({
      type: fc.constant("send" as const),
      hub: fc.nat(1),
      group: fc.nat(1),
      fast: fc.boolean(),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      type: fc.constant("grant" as const),
      hub: fc.nat(1),
      user: fc.nat(1),
      group: fc.nat(1),
      expires: fc.boolean(),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      type: fc.constant("revoke" as const),
      hub: fc.nat(1),
      user: fc.nat(1),
      group: fc.nat(1),
    }),
  },
  { weight: 1, arbitrary: fc.record({ type: fc.constant("expire" as const) }) },
  {
    weight: 1,
    arbitrary: fc.record({
      type: fc.constant("missed" as const),
      user: fc.nat(1),
      group: fc.nat(1),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({ type: fc.constant("disconnect" as const), client: fc.nat(2) }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      type: fc.constant("reconnect" as const),
      client: fc.nat(2),
      hub: fc.nat(1),
      fast: fc.boolean(),
    }),
  },
);

interface Options {
  runs: number;
  seed: number;
  /** Waits until the hubs did what a step set off. Default: a few turns of the event loop. */
  settle?: (history: MessageHistory) => Promise<void>;
}

const immediates = async () => {
  for (let i = 0; i < 4; i++) await new Promise((resolve) => setImmediate(resolve));
};
/** How long an expiring grant lasts, in the fake time the run keeps (see `expire`). */
const EXPIRY_MS = 1_000;

interface Client {
  readonly user: string;
  socket: FakeSocket | undefined;
  readonly positions: Map<string, string>;
  /** Its position in every group it has none of its own for: from the last connect. */
  since: string | undefined;
  /** Message ids received, per group, in order. */
  readonly received: Map<string, number[]>;
  /** Per group, the message count at the last `recovered: false` or `removed` notice. */
  readonly excused: Map<string, number>;
  /** Per group, the messages it is owed (sent during the membership while it was connected). */
  readonly owed: Map<string, number[]>;
  /** Messages sent during the membership while it was away: owed if it comes back within it. */
  away: Array<{ group: string; id: number; period: number }>;
}

/** Runs `runs` random interleavings against hubs on the history `makeHistory` gives. */
export async function checkResumeProperty(
  makeHistory: (store: InMemoryMembershipStore) => Promise<MessageHistory>,
  options: Options,
): Promise<void> {
  // Time moves only when a step says so: an expiry happens between two steps, never during one.
  vi.useFakeTimers({ toFake: ["Date", "setTimeout", "clearTimeout"] });
  try {
    await property(makeHistory, options);
  } finally {
    vi.useRealTimers();
  }
}

async function property(
  makeHistory: (store: InMemoryMembershipStore) => Promise<MessageHistory>,
  options: Options,
): Promise<void> {
  const settle = options.settle ?? immediates;
  await fc.assert(
    fc.asyncProperty(fc.array(action, { minLength: 1, maxLength: 24 }), async (actions) => {
      const store = new LossyStore();
      const history = await makeHistory(store);
      /** Per group: each message's id is its index; who was a member when it was sent. */
      const sent = new Map<string, Array<Set<string>>>(GROUPS.map((g) => [g, []]));
      /** The model's memberships: user -> group -> expiry (Infinity = never). */
      const members = new Map<string, Map<string, number>>(USERS.map((u) => [u, new Map()]));
      const isMember = (user: string, group: string) =>
        (members.get(user)?.get(group) ?? 0) > Date.now();
      /** Per user and group, a number that changes with every grant or revoke. */
      const periods = new Map<string, number>();
      const period = (user: string, group: string) => periods.get(`${user}\n${group}`) ?? 0;
      let changes = 0;
      const changed = (user: string, group: string) => periods.set(`${user}\n${group}`, ++changes);
      const clients: Client[] = [];
      const hubs: WsHub<FakeSocket>[] = [];
      const servers: FakeServer[] = [];
      for (let i = 0; i < 2; i++) {
        const server = new FakeServer();
        servers.push(server);
        hubs.push(
          bindWs<FakeSocket>(server, {
            store,
            history,
            heartbeatMs: 0,
            userIdOf: (request) => request.headers["x-user"] as string,
            resumeOf: (request) => (request as IncomingMessage & { resume?: ResumeRequest }).resume,
            renderMessage: (message, replayed) =>
              JSON.stringify({
                ...JSON.parse(message.payload.toString()),
                position: message.position,
                replayed,
              }),
            // A client knows the groups it is in, with no position until a message comes.
            onJoin: ({ socket }, group) => {
              const client = clients.find((c) => c.socket === socket);
              if (client !== undefined && !client.positions.has(group))
                client.positions.set(group, "");
            },
            // Told it left: nothing more of the group is owed to it.
            onLeave: ({ socket }, group) => {
              const client = clients.find((c) => c.socket === socket);
              client?.excused.set(group, sent.get(group)?.length ?? 0);
            },
            onResume: ({ socket }, report) => {
              const client = clients.find((c) => c.socket === socket);
              if (client === undefined) return;
              client.since = report.since;
              for (const resume of report.groups) {
                if (resume.position !== "") client.positions.set(resume.group, resume.position);
                if (!resume.recovered)
                  client.excused.set(resume.group, sent.get(resume.group)?.length ?? 0);
              }
              for (const group of report.removed) {
                client.positions.delete(group);
                client.excused.set(group, sent.get(group)?.length ?? 0);
              }
            },
            onError: (error) => {
              throw error;
            },
          }),
        );
      }
      const connect = async (client: Client, hub: number) => {
        const socket = new FakeSocket((text) => {
          const frame = JSON.parse(text) as { group: string; id: number; position: string };
          client.received.get(frame.group)?.push(frame.id);
          client.positions.set(frame.group, frame.position);
        });
        client.socket = socket;
        // What it missed during a membership that still holds (unchanged since) is owed now.
        for (const { group, id, period: p } of client.away)
          if (isMember(client.user, group) && period(client.user, group) === p)
            client.owed.get(group)?.push(id);
        client.away = [];
        const request = {
          headers: { "x-user": client.user },
          resume:
            client.since === undefined
              ? undefined
              : { since: client.since, positions: new Map(client.positions) },
        } as unknown as IncomingMessage;
        servers[hub]?.emit("connection", socket, request);
      };
      for (const user of CLIENTS) {
        const client: Client = {
          user: USERS[user] as string,
          socket: undefined,
          positions: new Map(),
          since: undefined,
          received: new Map(GROUPS.map((g) => [g, []])),
          excused: new Map(),
          owed: new Map(GROUPS.map((g) => [g, []])),
          away: [],
        };
        clients.push(client);
        await connect(client, 0);
        await settle(history);
      }
      try {
        for (const step of actions) {
          const hub = hubs["hub" in step ? step.hub : 0] as WsHub<FakeSocket>;
          switch (step.type) {
            case "send": {
              const group = GROUPS[step.group] as string;
              const list = sent.get(group) as Array<Set<string>>;
              const id = list.length;
              list.push(new Set(USERS.filter((u) => isMember(u, group))));
              for (const client of clients) {
                if (!isMember(client.user, group)) continue;
                if (client.socket?.readyState === 1) client.owed.get(group)?.push(id);
                else client.away.push({ group, id, period: period(client.user, group) });
              }
              await hub.broadcast(group, JSON.stringify({ group, id }));
              break;
            }
            case "grant": {
              const user = USERS[step.user] as string;
              const group = GROUPS[step.group] as string;
              const expiresAt = step.expires ? Date.now() + EXPIRY_MS : Infinity;
              await hub.grant(user, group, step.expires ? { expiresAt: new Date(expiresAt) } : {});
              members.get(user)?.set(group, expiresAt);
              changed(user, group);
              break;
            }
            case "revoke": {
              const user = USERS[step.user] as string;
              const group = GROUPS[step.group] as string;
              members.get(user)?.delete(group);
              changed(user, group);
              await hub.revoke(user, group);
              break;
            }
            case "missed": {
              // A grant the hubs' feed lost: they only hear `resync` (changes may be missed).
              const user = USERS[step.user] as string;
              const group = GROUPS[step.group] as string;
              await store.behindTheirBack(() => store.addToGroup(user, group));
              members.get(user)?.set(group, Infinity);
              changed(user, group);
              store.resync();
              break;
            }
            case "expire":
              // Every expiring membership runs out, and its connections leave.
              vi.advanceTimersByTime(EXPIRY_MS);
              for (const [user, groups] of members)
                for (const [group, expiresAt] of groups)
                  if (expiresAt <= Date.now()) {
                    groups.delete(group);
                    changed(user, group);
                  }
              break;
            case "disconnect":
              clients[step.client]?.socket?.close();
              break;
            case "reconnect": {
              const client = clients[step.client] as Client;
              client.socket?.close();
              await connect(client, step.hub);
              break;
            }
          }
          // A fast step does not wait for the hubs: the next one races with it (a message sent
          // while a client resumes).
          if (!("fast" in step && step.fast)) await settle(history);
        }
        await settle(history);
        // Everyone reconnects at the end, so that what was missed is owed now.
        for (const client of clients) {
          client.socket?.close();
          await connect(client, 0);
        }
        await settle(history);
        for (const client of clients) {
          for (const group of GROUPS) {
            const got = client.received.get(group) ?? [];
            const list = sent.get(group) ?? [];
            // Never a message sent outside the membership; never twice; in order.
            for (const id of got)
              expect(list[id]?.has(client.user), `${client.user} got ${group}#${id}`).toBe(true);
            expect(got).toEqual([...got].sort((a, b) => a - b));
            expect(new Set(got).size).toBe(got.length);
            // It got every message it is owed since the last notice: those sent during the
            // membership while it was connected, and while it was away if the membership still
            // held when it came back.
            const from = client.excused.get(group) ?? 0;
            const owed = (client.owed.get(group) ?? []).filter((id) => id >= from);
            expect(got).toEqual(expect.arrayContaining(owed));
          }
        }
      } finally {
        for (const client of clients) client.socket?.close();
        await Promise.all(hubs.map((h) => h.close()));
        await history.close();
        await store.close();
      }
    }),
    { numRuns: options.runs, seed: options.seed },
  );
}
