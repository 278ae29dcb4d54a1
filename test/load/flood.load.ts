import { spawn } from "node:child_process";
import { once } from "node:events";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { AzureTableMembershipStore } from "../../adapters/index.js";
import { quantile } from "../../bench/lib.js";
import {
  Client,
  type RunningSample,
  type SampleEnv,
  sampleEnv,
  sleep,
  startSample,
  token,
} from "../support/sample.js";

/**
 * `npm run test:load`: 200 members of one room on the ws sample with its default limits; one
 * ordinary member sends a timestamped message every 100 ms, first into a quiet room, then while
 * 5 flooding users in another process send as fast as their sockets take frames (and reconnect
 * whenever they are closed). Reports both latencies. (Two servers sharing Redis ran once too:
 * flood p99 27.3 ms against 14.3 ms quiet, 1,290 delivered, one budget; it also hung once,
 * unexplained, so it is not in CI: test/e2e/ws.redis.ts proves the shared budget.)
 */
const MEMBERS = 200;
const FLOODERS = 5;
const PHASE_MS = 4_000;
const ROOT = fileURLToPath(new URL("../..", import.meta.url));

describe("flood: 5 flooders in a room of 200 cannot starve an ordinary member", () => {
  let env: SampleEnv;
  let sample: RunningSample;
  const clients: Client[] = [];
  beforeAll(async () => {
    env = sampleEnv(inject("azuriteConnectionString"));
    const store = AzureTableMembershipStore.fromConnectionString(
      inject("azuriteConnectionString"),
      { tableName: env.MEMBERSHIP_TABLE },
    );
    await store.addMany(
      Array.from({ length: MEMBERS }, (_, i) => ({ userId: `m${i}`, group: "room" })),
    );
    await store.close();
    sample = await startSample(env);
  });
  afterAll(async () => {
    for (const client of clients) client.close();
    await sample?.stop();
  });

  it("keeps the ordinary member's latency, refuses the flood, bounds memory, delivers nothing past the limit", async () => {
    for (let i = FLOODERS; i < MEMBERS; i++)
      clients.push(await Client.connect(sample.wsUrl, token(env, `m${i}`)));
    const [ordinary, receiver] = clients as [Client, Client];

    /** One message every 100 ms for `ms`; the latencies at `receiver`, in ms. */
    const phase = async (label: string, ms: number) => {
      const latencies: number[] = [];
      for (let n = 0; n < ms / 100; n++) {
        const sentAt = performance.now();
        const text = `${label} ${n}`;
        ordinary.send({ type: "send", group: "room", text });
        await receiver.next((m) => m.text === text, 3_000);
        latencies.push(performance.now() - sentAt);
        await sleep(Math.max(0, 100 - (performance.now() - sentAt)));
      }
      return latencies;
    };
    const stats = async () =>
      (await (await fetch(`${sample.url}/stats?gc=1`)).json()) as {
        heapUsed: number;
        rss: number;
      };

    const quiet = await phase("quiet", PHASE_MS);
    const before = await stats();
    const flooder = spawn(
      process.execPath,
      [
        "--import",
        "tsx",
        "test/load/flooder.ts",
        JSON.stringify({
          wsUrl: sample.wsUrl,
          tokens: Array.from({ length: FLOODERS }, (_, i) => token(env, `m${i}`)),
          group: "room",
          ms: PHASE_MS + 500,
        }),
      ],
      { cwd: ROOT, stdio: ["ignore", "pipe", "inherit"] },
    );
    let out = "";
    flooder.stdout.on("data", (chunk: Buffer) => {
      out += chunk;
    });
    await sleep(300); // the flood is on
    const flood = await phase("flood", PHASE_MS);
    const during = await stats();
    await once(flooder, "exit");
    const report = JSON.parse(out.trim().split("\n").at(-1) ?? "{}") as {
      sent: number;
      rateLimited: number;
      closed: number;
      refused: number;
    };
    await sleep(300);
    const delivered = receiver.messages.filter((m) => String(m.text).startsWith("flood ")).length;

    const p = (xs: number[], q: number) => Math.round(quantile(xs, q) * 10) / 10;
    console.log(
      `flood: ordinary member's latency quiet p50 ${p(quiet, 0.5)} ms / p99 ${p(quiet, 0.99)} ms, ` +
        `during the flood p50 ${p(flood, 0.5)} ms / p99 ${p(flood, 0.99)} ms; flooders sent ` +
        `${report.sent} frames, ${report.rateLimited} answered rate_limited, ${report.closed} ` +
        `connections closed, ${report.refused} reconnections refused; ${delivered} delivered to ` +
        `each member; server heap ${Math.round(before.heapUsed / 2 ** 20)} → ` +
        `${Math.round(during.heapUsed / 2 ** 20)} MiB, RSS ${Math.round(before.rss / 2 ** 20)} → ` +
        `${Math.round(during.rss / 2 ** 20)} MiB`,
    );
    expect(report.rateLimited).toBeGreaterThan(0);
    expect(report.closed).toBeGreaterThan(0);
    // A reconnection gets a fresh connection budget, but each flooder is one user: at most 50 of
    // its messages a second get through, however often it comes back.
    const seconds = (PHASE_MS + 500) / 1_000;
    expect(delivered).toBeLessThanOrEqual(FLOODERS * 50 * Math.ceil(seconds + 1));
    expect(delivered).toBeLessThan(report.sent / 10);
    // Not starved: unlimited, the same flood took the p99 to 572 ms and lost messages. How
    // close to the quiet figure it stays is measured, not gated (timings belong in benchmarks).
    expect(quantile(flood, 0.99)).toBeLessThan(100);
    expect(during.heapUsed - before.heapUsed).toBeLessThan(64 * 2 ** 20);
  });
});
