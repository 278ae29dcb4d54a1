/**
 * Revoke propagation: this process revokes through its own store (the admin's side), the sample
 * server runs in another and learns of it through the change log. Time from the start of
 * `removeFromGroup` until both live connections of the user got `removed`, over 50 revokes.
 */
import WebSocket from "ws";
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

/** A connection that resolves waiters when a frame with `type` and `group` arrives. */
function listen(url: string, bearer: string) {
  const ws = new WebSocket(`${url.replace("http", "ws")}/hub`, {
    headers: { authorization: `Bearer ${bearer}` },
  });
  const waiters: Array<{ type: string; group: string; resolve: () => void }> = [];
  ws.on("message", (data) => {
    const m = JSON.parse(data.toString()) as { type: string; group?: string };
    for (const w of waiters.splice(0))
      if (w.type === m.type && w.group === m.group) w.resolve();
      else waiters.push(w);
  });
  const opened = new Promise<void>((resolve, reject) => {
    ws.on("message", function welcome(data) {
      if (data.toString().includes('"welcome"')) {
        ws.off("message", welcome);
        resolve();
      }
    });
    ws.once("error", reject);
  });
  const next = (type: string, group: string, timeoutMs = 10_000) =>
    new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${type} ${group}`)), timeoutMs);
      const done = () => {
        clearTimeout(timer);
        resolve();
      };
      waiters.push({ type, group, resolve: done });
    });
  return { ws, opened, next };
}

const revoke: Benchmark = async (ctx) => {
  const env = sampleEnv(ctx.connectionString);
  const { store } = benchStore({ ...ctx, table: () => env.MEMBERSHIP_TABLE });
  const server = await startSample(env, { nodeArgs: serverNodeArgs() });
  const revokes = 50;
  const user = "revoked-user";
  const connections = [listen(server.url, token(env, user)), listen(server.url, token(env, user))];
  try {
    await Promise.all(connections.map((c) => c.opened));
    const times: number[] = [];
    for (let i = 0; i < revokes; i++) {
      const group = `room-${i}`;
      const joined = connections.map((c) => c.next("joined", group));
      await store.addToGroup(user, group);
      await Promise.all(joined);
      // At a random point of the server's poll cycle, not right after the poll that brought the grant.
      await sleep(Math.random() * 300);
      const removed = connections.map((c) => c.next("removed", group));
      times.push(
        await timed(async () => {
          await store.removeFromGroup(user, group);
          await Promise.all(removed);
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
    for (const c of connections) c.ws.terminate();
    await server.stop();
    await store.close();
  }
};

export default revoke;
