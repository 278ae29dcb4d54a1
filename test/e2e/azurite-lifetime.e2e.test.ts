/**
 * The Azurite that `npm start` starts never outlives the sample: not when the sample is
 * SIGKILLed, not when it dies of an uncaught error. Otherwise it keeps its port and the next
 * `npm start` fails on it.
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { freePort } from "../../adapters/testing/azurite.js";
import { type RunningSample, sampleEnv, startSample } from "../support/sample.js";

/** Whether a new listener can bind 127.0.0.1:`port`, i.e. what the next `npm start` needs. */
async function canBind(port: number): Promise<boolean> {
  const server = createServer();
  return new Promise((resolve) => {
    server.once("error", () => resolve(false));
    server.listen(port, "127.0.0.1", () => server.close(() => resolve(true)));
  });
}

/** Polls until `port` can be bound; false if it still cannot after `ms`. */
async function portFreed(port: number, ms = 5_000): Promise<boolean> {
  for (const deadline = Date.now() + ms; Date.now() < deadline; await sleep(100)) {
    if (await canBind(port)) return true;
  }
  return canBind(port);
}

/** Pids of Azurites serving `port` (Linux /proc), so that a failing test leaves none behind. */
function azuritePids(port: number): number[] {
  if (!existsSync("/proc")) return [];
  return readdirSync("/proc")
    .filter((entry) => /^\d+$/.test(entry))
    .filter((pid) => {
      try {
        const args = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
        return args[args.indexOf("--tablePort") + 1] === String(port);
      } catch {
        return false; // gone meanwhile
      }
    })
    .map(Number);
}

describe("the Azurite of `npm start` ends with the sample", { timeout: 60_000 }, () => {
  let port: number;
  let location: string;
  let sample: RunningSample | undefined;

  /** The sample on its own Azurite (no connection string), on a known free port. */
  const start = async (nodeArgs: string[] = []) => {
    sample = await startSample(
      {
        ...sampleEnv(""),
        AZURE_TABLES_CONNECTION_STRING: undefined,
        AZURITE_PORT: String(port),
        AZURITE_LOCATION: location,
      },
      { nodeArgs },
    );
    expect(sample.output()).toContain(`Azurite table service on 127.0.0.1:${port}`);
    expect(await canBind(port)).toBe(false);
    return sample;
  };

  beforeEach(async () => {
    port = await freePort();
    location = await mkdtemp(join(tmpdir(), "hub-membership-azurite-"));
  });
  afterEach(async () => {
    await sample?.stop("SIGKILL");
    sample = undefined;
    for (const pid of azuritePids(port)) process.kill(pid, "SIGKILL");
    await rm(location, { recursive: true, force: true });
  });

  it("SIGKILL of the sample: Azurite's port is free again within seconds", async () => {
    const running = await start();
    expect(await running.stop("SIGKILL")).toBeNull();
    expect(await portFreed(port)).toBe(true);
  });

  it("SIGTERM of the sample: it stops Azurite and exits 0", async () => {
    const running = await start();
    expect(await running.stop("SIGTERM")).toBe(0);
    expect(await canBind(port)).toBe(true);
  });

  // A preload that makes the sample fail on SIGUSR2, once it is up: a bug, on demand.
  const failOn = (failure: string) =>
    `data:text/javascript,process.on("SIGUSR2", () => { ${failure}; });`;

  it.each([
    ["an uncaught exception", 'throw new Error("boom on purpose")'],
    ["an unhandled rejection", 'Promise.reject(new Error("boom on purpose"))'],
  ])("%s in the sample: one fatal line, Azurite stopped, exit 1", async (_, failure) => {
    const running = await start(["--import", failOn(failure)]);
    expect(await running.stop("SIGUSR2")).toBe(1);
    expect(running.output()).toMatch(/^fatal: boom on purpose$/m);
    expect(running.output()).not.toMatch(/^\s+at /m); // no stack trace
    expect(await canBind(port)).toBe(true);
  });
});
