/**
 * Shared by the connect-storm and idle-memory benchmarks: grants `users` × `groupsPerUser`
 * memberships, starts the sample server (`--expose-gc`), connects every user `perUser` times from
 * the load generator, and reads the server's /stats before and while the connections are held.
 */
import { sampleEnv, startSample } from "../test/support/processes.js";
import { type BenchContext, benchStore, loadgen, serverNodeArgs, serverStats } from "./lib.js";

export interface ConnectResult {
  connections: number;
  failed: number;
  /** Until the last `welcome`. */
  ms: number;
  welcomeP50: number;
  welcomeP99: number;
  /** Server's storage requests (not counting change-log polls) while connecting. */
  storageRequests: number;
  heapPerConnection: number;
  rssPerConnection: number;
}

export async function connectMany(
  ctx: BenchContext,
  options: { users: number; perUser: number; groupsPerUser: number; hub?: "ws" | "socket.io" },
): Promise<ConnectResult> {
  const env = { ...sampleEnv(ctx.connectionString), HUB: options.hub ?? "ws" };
  const { store } = benchStore(ctx, { tableName: env.MEMBERSHIP_TABLE });
  const users = Array.from({ length: options.users }, (_, i) => `user-${i}`);
  const POOL = 500; // each group has users × groupsPerUser / 500 members
  await store.addMany(
    users.flatMap((userId, i) =>
      Array.from({ length: options.groupsPerUser }, (_, k) => ({
        userId,
        group: `room-${(i + k * 25) % POOL}`,
      })),
    ),
  );
  await store.close();
  const server = await startSample(env, { nodeArgs: serverNodeArgs() });
  try {
    const before = await serverStats(server.url, true);
    let held: Awaited<ReturnType<typeof serverStats>> | undefined;
    const result = await loadgen<{
      connections: number;
      failed: number;
      ms: number;
      welcomeP50: number;
      welcomeP99: number;
    }>(
      {
        mode: "connect",
        url: server.url,
        hub: options.hub ?? "ws",
        secret: env.JWT_SECRET,
        users,
        perUser: options.perUser,
        window: 200,
        hold: true,
        timeoutMs: 120_000,
      },
      (line, child) => {
        if (!line.includes('"ready"')) return;
        serverStats(server.url, true).then((stats) => {
          held = stats;
          child.stdin?.write("close\n");
        });
      },
    );
    if (held === undefined) throw new Error("the load generator never said it was ready");
    const n = result.connections;
    return {
      ...result,
      storageRequests: held.storageRequests.membership - before.storageRequests.membership,
      heapPerConnection: (held.heapUsed - before.heapUsed) / n,
      rssPerConnection: (held.rss - before.rss) / n,
    };
  } finally {
    await server.stop();
  }
}
