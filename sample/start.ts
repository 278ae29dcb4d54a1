/**
 * `npm start`: the chat sample. Starts Azurite (table service, data in azurite-data/) unless
 * AZURE_TABLES_CONNECTION_STRING is set, then the hub server. Ctrl-C stops both.
 */
import { type Azurite, startAzurite } from "../adapters/testing/azurite.js";
import { ConfigError, loadConfig } from "./config.js";
import { redactedMessage } from "./redact.js";
import { startHubServer } from "./server.js";
import { startSocketIoServer } from "./socket-io-server.js";

/** The Azurite this process started, if it did. */
let azurite: Azurite | undefined;

// A bug (an uncaught exception, an unhandled rejection) still ends the process, but with one
// line and with Azurite stopped first: its port is free when we exit, not a moment later.
let dying = false;
const fatal = (error: unknown) => {
  if (dying) return;
  dying = true;
  console.error(`fatal: ${redactedMessage(error)}`);
  void Promise.resolve(azurite?.stop()).finally(() => process.exit(1));
};
process.on("uncaughtException", fatal);
process.on("unhandledRejection", fatal);

async function main() {
  let config = loadConfig();
  if (config.connectionString === undefined) {
    azurite = await startAzurite({
      port: config.azuritePort,
      location: config.azuriteLocation,
    }).catch((error: unknown) => {
      const inUse = /EADDRINUSE/.test(String(error));
      throw new ConfigError(
        `AZURITE_PORT: could not start Azurite on 127.0.0.1:${config.azuritePort}` +
          (inUse ? ": the port is in use (another npm start, or its Azurite?)" : "") +
          `: stop what listens there, set AZURITE_PORT, or set AZURE_TABLES_CONNECTION_STRING to use your own storage` +
          (inUse ? "" : ` (${String(error).split("\n")[0]})`),
        { cause: error },
      );
    });
    console.log(
      `Azurite table service on 127.0.0.1:${azurite.port}, data in ${config.azuriteLocation}`,
    );
    // The port Azurite really got (AZURITE_PORT=0 picks a free one).
    config = { ...config, connectionString: azurite.connectionString };
  }
  const start = config.hub === "socket.io" ? startSocketIoServer : startHubServer;
  const server = await start(config).catch(async (error: unknown) => {
    await azurite?.stop();
    throw error;
  });
  let stopping = false;
  const stop = async (signal: string, code = 0) => {
    if (stopping) return;
    stopping = true;
    console.log(`${signal}: stopping`);
    await server.close();
    await azurite?.stop();
    process.exit(code);
  };
  // Serving on after the table's feed was switched would mean missing every change from then on.
  void server.failed.then((error) => {
    console.error(`error: ${redactedMessage(error)}`);
    return stop("the change feed was switched", 1);
  });
  // Before "listening" is printed: a signal sent as soon as it is must find these handlers.
  process.on("SIGINT", () => void stop("SIGINT"));
  process.on("SIGTERM", () => void stop("SIGTERM"));
  const endpoint =
    config.hub === "socket.io"
      ? `Socket.IO, websocket transport${config.redisUrl ? ", messages on Redis" : ""}`
      : `WebSocket: ${server.url.replace("http", "ws")}/hub, SignalR: ${server.url}/signalr`;
  console.log(`hub-membership sample listening on ${server.url} (${endpoint})`);
  if (config.devSignIn) console.log("dev sign-in is on: GET /token?user=<name> mints a token");
}

main().catch((error: unknown) => {
  // One line, no stack, no secret: what went wrong and, where it can, what to do.
  console.error(
    `${error instanceof ConfigError ? "configuration error" : "error"}: ${redactedMessage(error)}`,
  );
  process.exit(1);
});
