import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Azurite, startAzurite } from "../../adapters/testing/azurite.js";
import {
  admin,
  grant,
  isRemoved,
  logLines,
  type RunningSample,
  type SampleEnv,
  sampleEnv,
  startSample,
  token,
  upgradeStatus,
  useClients,
  useSignalRClients,
} from "../support/sample.js";

const connect = useClients();
const connectSignalR = useSignalRClients();

/** One sample of a metric in Prometheus's text format (0 when absent). */
function metric(text: string, name: string, labels: Record<string, string> = {}): number {
  const wanted = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (!wanted.every((label) => line.includes(label))) continue;
    return Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return 0;
}

describe("the sample's /metrics and logs", { timeout: 90_000 }, () => {
  // An Azurite of its own: the test stops it to make an outage.
  let azurite: Azurite;
  let env: SampleEnv;
  let sample: RunningSample;
  const scrape = async () => {
    const response = await fetch(`${sample.url}/metrics`);
    expect(response.headers.get("content-type")).toMatch(/^text\/plain; version=0\.0\.4/);
    return response.text();
  };
  beforeAll(async () => {
    azurite = await startAzurite();
    env = sampleEnv(azurite.connectionString);
    sample = await startSample(env);
  });
  afterAll(async () => {
    await sample?.stop();
    await azurite?.stop();
  });

  it("moves the revoke counter and the propagation-lag histogram on an admin revoke, logs it, and shows a storage outage", async () => {
    await grant(env, "alice", "Sports");
    const secret = token(env, "alice");
    const ws = await connect(sample.wsUrl, secret);
    const signalr = await connectSignalR(sample.url, token(env, "alice"));
    expect(await upgradeStatus(sample.wsUrl, { authorization: "Bearer nope" })).toBe(401);
    const before = await scrape();
    expect(metric(before, "hub_membership_connections", { endpoint: "ws" })).toBe(1);
    expect(metric(before, "hub_membership_connections", { endpoint: "signalr" })).toBe(1);
    expect(metric(before, "hub_membership_groups", { endpoint: "ws" })).toBe(1);
    expect(
      metric(before, "hub_membership_connections_refused_total", {
        endpoint: "ws",
        reason: "unauthorized",
      }),
    ).toBe(1);
    expect(
      metric(before, "hub_membership_storage_request_duration_seconds_count", {
        operation: "query",
        outcome: "ok",
      }),
    ).toBeGreaterThan(0);

    const revoked = await admin(env, "revoke", "alice", "Sports");
    expect(revoked.code, revoked.stderr).toBe(0);
    await ws.next(isRemoved("Sports"));
    await signalr.next(isRemoved("Sports"));
    const after = await scrape();
    // Once per change applied on this server (its two hubs each apply it to theirs).
    const revokes = (text: string) =>
      metric(text, "hub_membership_revokes_applied_total", { reason: "revoked" });
    expect(revokes(after) - revokes(before)).toBe(2);
    const lagCount = (text: string) =>
      metric(text, "hub_membership_propagation_lag_seconds_count", { type: "removed" });
    expect(lagCount(after) - lagCount(before)).toBe(2);
    expect(
      metric(after, "hub_membership_propagation_lag_seconds_sum", { type: "removed" }),
    ).toBeLessThan(10);
    expect(metric(after, "hub_membership_groups", { endpoint: "ws" })).toBe(0);

    const logs = logLines(sample.output());
    expect(logs).toContainEqual(
      expect.objectContaining({
        event: "connection.opened",
        endpoint: "signalr",
        userId: "alice",
      }),
    );
    expect(logs).toContainEqual(
      expect.objectContaining({
        event: "connection.refused",
        endpoint: "ws",
        reason: "unauthorized",
      }),
    );
    expect(logs).toContainEqual(
      expect.objectContaining({
        event: "membership.revoked",
        userId: "alice",
        group: "Sports",
        reason: "revoked",
        lagMs: expect.any(Number),
      }),
    );
    expect(sample.output()).not.toContain(secret);
    expect(sample.output()).not.toContain(env.JWT_SECRET);

    // Storage goes away: the change feed's polls fail, and the metrics and logs say so.
    await azurite.stop();
    await expect
      .poll(async () => metric(await scrape(), "hub_membership_change_feed_up"), {
        timeout: 20_000,
      })
      .toBe(0);
    const down = await scrape();
    expect(metric(down, "hub_membership_change_feed_outages_total")).toBe(1);
    expect(
      metric(down, "hub_membership_storage_request_duration_seconds_count", {
        operation: "query",
        outcome: "error",
      }),
    ).toBeGreaterThan(0);
    expect(logLines(sample.output())).toContainEqual(
      expect.objectContaining({ event: "feed.down", level: 50 }),
    );
  });
});
