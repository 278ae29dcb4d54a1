/**
 * Azurite's table service for tests, benchmarks and local runs (`hub-membership/testing/azurite`):
 * started as a child process on a free port, in memory unless given a folder, and ending with the
 * process that started it. Needs the `azurite` package (an optional peer dependency; 3.35 is the
 * last that runs on Node 20).
 *
 * @module
 */
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { createRequire } from "node:module";
import { createServer } from "node:net";

/** Azurite's well-known development account (public, documented by Microsoft; not a secret). */
const DEV_ACCOUNT = "devstoreaccount1";
const DEV_KEY =
  "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/** What azurite-table runs: the table service alone (the package's main is a VS Code extension). */
const tableServer = () => createRequire(import.meta.url).resolve("azurite/dist/src/table/main.js");

/**
 * Preloaded into Azurite's node: it exits when its stdin, a pipe from the process that started
 * it, closes. The kernel closes the parent's end whenever the parent ends, even on SIGKILL, where
 * no exit handler of the parent runs. Azurite does not read stdin; `unref` keeps the pipe from
 * holding Azurite's event loop open, so its own exits are unchanged.
 */
const DIE_WITH_PARENT =
  'data:text/javascript,process.stdin.on("close", () => process.exit()).resume().unref();';

export interface AzuriteOptions {
  /** TCP port on 127.0.0.1; 0 or absent picks a free one. */
  port?: number;
  /** Workspace folder; absent means in-memory persistence (nothing written to disk). */
  location?: string;
  /** Node flags for Azurite's process, e.g. `--cpu-prof` (the benchmarks' BENCH_PROFILE). */
  nodeArgs?: string[];
}

export interface Azurite {
  readonly port: number;
  readonly connectionString: string;
  readonly process: ChildProcess;
  /** Stops Azurite (SIGINT, so it saves, then SIGKILL after 5 s) and waits for it to exit. */
  stop(): Promise<void>;
}

/** The connection string of Azurite's table service on `port` (not `UseDevelopmentStorage`, which pins 10002). */
export const azuriteConnectionString = (port: number) =>
  `DefaultEndpointsProtocol=http;AccountName=${DEV_ACCOUNT};AccountKey=${DEV_KEY};` +
  `TableEndpoint=http://127.0.0.1:${port}/${DEV_ACCOUNT};`;

export async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as { port: number };
  server.close();
  await once(server, "close");
  return port;
}

/**
 * Starts Azurite's table service as a child process (its package main is a VS Code extension, so
 * it cannot be imported) and resolves once it listens. Telemetry off, access log off. It never
 * outlives this process: it exits when this process ends, however it ends (even SIGKILL), so an
 * orphan cannot keep the port from the next run.
 */
export async function startAzurite(options: AzuriteOptions = {}): Promise<Azurite> {
  const fixedPort = options.port !== undefined && options.port !== 0;
  for (let attempt = 1; ; attempt++) {
    const port = fixedPort ? (options.port as number) : await freePort();
    try {
      return await launch(port, options.location, options.nodeArgs ?? []);
    } catch (error) {
      // A free port can be taken between probing and binding: try another one.
      if (fixedPort || attempt >= 5) throw error;
    }
  }
}

async function launch(
  port: number,
  location: string | undefined,
  nodeArgs: string[],
): Promise<Azurite> {
  const args = [
    "--tableHost",
    "127.0.0.1",
    "--tablePort",
    String(port),
    "--disableTelemetry",
    "--silent",
  ];
  args.push(...(location ? ["--location", location] : ["--inMemoryPersistence"]));
  const child = spawn(
    process.execPath,
    [...nodeArgs, "--import", DIE_WITH_PARENT, tableServer(), ...args],
    { stdio: ["pipe", "pipe", "pipe"] }, // stdin: the pipe DIE_WITH_PARENT watches
  );
  let output = "";
  const exited = once(child, "exit");
  await new Promise<void>((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      output += chunk.toString();
      if (output.includes("successfully started")) resolve();
    };
    child.stdout?.on("data", onData);
    child.stderr?.on("data", onData);
    child.once("error", reject);
    exited.then(([code]) =>
      reject(
        new Error(`Azurite exited (code ${code}) before listening on ${port}:\n${output.trim()}`),
      ),
    );
  });
  return {
    port,
    connectionString: azuriteConnectionString(port),
    process: child,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
      // SIGINT is the signal Azurite closes on, saving its on-disk store; on SIGTERM it dies
      // with up to 5 s of writes (its autosave interval) not yet on disk.
      child.kill("SIGINT");
      await exited;
      clearTimeout(timer);
    },
  };
}
