import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { once } from "node:events";
import { createServer, type Socket, connect as tcpConnect } from "node:net";
import { freePort } from "../../adapters/testing/azurite.js";

export interface RedisServer {
  readonly url: string;
  readonly port: number;
  /** Kills it (SIGKILL: no goodbye to clients, nothing saved) and waits for the exit. */
  kill(): Promise<void>;
  /** Starts it again on the same port, empty (no persistence). */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

/** How many scripts a Redis server has run: round trips, where a script's own commands are not. */
export async function scriptsRun(client: { info(section: string): Promise<string> }) {
  return Number(/cmdstat_eval:calls=(\d+)/.exec(await client.info("commandstats"))?.[1] ?? 0);
}

/** A redis-server of the test's own (in memory, random port), to kill and restart at will. */
export async function startRedis(): Promise<RedisServer> {
  if (spawnSync("redis-server", ["--version"]).error) {
    throw new Error(
      "These tests need redis-server on PATH (Debian: apt-get install redis-server; .ci/run does).",
    );
  }
  const port = await freePort();
  let child: ChildProcess | undefined;
  const launch = async () => {
    const process = spawn(
      "redis-server",
      ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
      { stdio: ["ignore", "pipe", "inherit"] },
    );
    let output = "";
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`redis-server did not start:\n${output}`)),
        10_000,
      );
      process.stdout?.on("data", (chunk: Buffer) => {
        output += chunk;
        if (output.includes("Ready to accept connections")) {
          clearTimeout(timer);
          resolve();
        }
      });
      process.once("exit", () => reject(new Error(`redis-server exited:\n${output}`)));
    });
    child = process;
  };
  const end = async (signal: NodeJS.Signals) => {
    const running = child;
    child = undefined;
    if (running === undefined || running.exitCode !== null) return;
    running.kill(signal);
    await once(running, "exit");
  };
  await launch();
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    kill: () => end("SIGKILL"),
    restart: launch,
    stop: () => end("SIGTERM"),
  };
}

/** A TCP proxy to `port` that can cut every connection and refuse new ones: a network partition. */
export async function partitionableProxy(port: number) {
  const sockets = new Set<Socket>();
  let cut = false;
  const server = createServer((client) => {
    if (cut) return client.destroy();
    const upstream = tcpConnect(port, "127.0.0.1");
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on("close", () => sockets.delete(socket));
      socket.on("error", () => {
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream).pipe(client);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port: proxyPort } = server.address() as { port: number };
  return {
    url: `redis://127.0.0.1:${proxyPort}`,
    cut() {
      cut = true;
      for (const socket of sockets) socket.destroy();
    },
    heal() {
      cut = false;
    },
    async close() {
      this.cut();
      server.close();
      await once(server, "close");
    },
  };
}
