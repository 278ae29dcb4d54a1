/**
 * Revoke propagation: this process revokes through its own store (the admin's side), the sample
 * server runs in another and learns of it through the change log. Time from the start of
 * `removeFromGroup` until both live connections of the user got `removed`, over 50 revokes.
 */
import { Client, isRemoved } from "../test/support/clients.js";
import { sampleEnv, startSample, token } from "../test/support/processes.js";
import {
  type Benchmark,
  benchStore,
  median,
  p99,
  round,
  serverNodeArgs,
  sleep,
  timed,
} from "./lib.js";

const revoke: Benchmark = async (ctx) => {
  const env = sampleEnv(ctx.connectionString);
  const { store } = benchStore(ctx, { tableName: env.MEMBERSHIP_TABLE });
  const server = await startSample(env, { nodeArgs: serverNodeArgs() });
  const revokes = 50;
  const user = "revoked-user";
  const connections: Client[] = [];
  try {
    for (let i = 0; i < 2; i++)
      connections.push(await Client.connect(server.wsUrl, token(env, user)));
    const times: number[] = [];
    for (let i = 0; i < revokes; i++) {
      const group = `room-${i}`;
      const joined = connections.map((c) =>
        c.next((m) => m.type === "joined" && m.group === group),
      );
      await store.addToGroup(user, group);
      await Promise.all(joined);
      // At a random point of the server's poll cycle, not right after the poll that brought the grant.
      await sleep(Math.random() * 300);
      times.push(
        await timed(async () => {
          await store.removeFromGroup(user, group);
          await Promise.all(connections.map((c) => c.next(isRemoved(group))));
        }),
      );
    }
    return [
      {
        benchmark: "revoke propagation",
        case: `${revokes} revokes from another process, 2 connections each`,
        value: round(median(times)),
        unit: "ms",
        p99: round(p99(times)),
        target: "p99 ≤ 1 s",
        met: p99(times) <= 1_000,
      },
    ];
  } finally {
    for (const c of connections) c.close();
    await server.stop();
    await store.close();
  }
};

export default revoke;
