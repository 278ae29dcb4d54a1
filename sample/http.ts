import { timingSafeEqual } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { monitorEventLoopDelay } from "node:perf_hooks";
import type { PipelinePolicy } from "@azure/core-rest-pipeline";
import { requestTarget } from "../adapters/hubs/ws.js";
import {
  type AzureTableMembershipStore,
  ChangeFeedMismatchError,
  isValidName,
  type MembershipStore,
  type Presence,
} from "../adapters/index.js";
import { mintToken } from "./auth.js";
import { onlineOf } from "./chat-bus.js";
import {
  ConfigError,
  isLoopback,
  isRefusedByStore,
  openTableStore,
  refusal,
  type SampleConfig,
} from "./config.js";
import type { Log, Observability } from "./observability.js";
import { changeFeedOf, connectRedis } from "./redis.js";

/** Storage requests a server sent, split into change-log polls and everything else. */
export interface StorageRequests {
  membership: number;
  changeLog: number;
}

/**
 * The server's store, with a pipeline policy counting its requests (reported by /stats: the
 * connect-storm benchmark checks one read per user), on the change feed REDIS_URL chooses.
 * Checked first: a store that refuses the key or SAS, or a table on the other feed, stops the
 * server with a configuration error; a storage outage does not (it serves once storage is back).
 */
export async function openStore(
  config: SampleConfig,
  log: Log,
): Promise<{
  store: AzureTableMembershipStore;
  requests: StorageRequests;
  /** Resolves when the server must stop serving: the table's feed was switched under it. */
  failed: Promise<Error>;
}> {
  let fail: (error: Error) => void = () => {};
  const failed = new Promise<Error>((resolve) => {
    fail = resolve;
  });
  const requests: StorageRequests = { membership: 0, changeLog: 0 };
  const counter: PipelinePolicy = {
    name: "hub-membership-sample-request-counter",
    sendRequest(request, next) {
      // Change-log queries filter on its partitions, `c:0` to `c:3` (adapters/stores/azure-change-log.ts).
      if (decodeURIComponent(request.url).includes("PartitionKey eq 'c:")) requests.changeLog++;
      else requests.membership++;
      return next(request);
    },
  };
  if (config.redisUrl !== undefined) (await connectRedis(config.redisUrl)).destroy();
  const changeFeed = changeFeedOf(config);
  const store = openTableStore(config, {
    clientOptions: { additionalPolicies: [{ policy: counter, position: "perCall" }] },
    ...(changeFeed && { changeFeed }),
    // Outages are logged (and counted) from the library's feed channel: see observability.ts.
    // A switch of the table's feed is not an outage: this server would serve stale groups.
    onWatchError: (error) => {
      if (error instanceof ChangeFeedMismatchError) {
        const stale = refusal(config, error);
        log.error({ event: "feed.switched", err: stale }, "the table's change feed was switched");
        fail(stale);
      }
    },
  });
  try {
    await store.verify();
  } catch (error) {
    if (!isRefusedByStore(error)) {
      log.error(
        { event: "store.unavailable", err: error },
        "the membership store is unavailable for now",
      );
    } else {
      await store.close();
      throw refusal(config, error);
    }
  }
  return { store, requests, failed };
}

const loopDelay = monitorEventLoopDelay({ resolution: 10 });
loopDelay.enable();

export function sendJson(res: ServerResponse, status: number, body: object): void {
  res.writeHead(status, { "content-type": "application/json", "cache-control": "no-store" });
  res.end(JSON.stringify(body));
}

/**
 * The routes both sample hubs serve: /healthz (the store answers), /stats (`stats()` plus heap,
 * RSS, CPU time and the event loop's delay since the previous /stats; `?gc=1` collects garbage first when node runs with --expose-gc), the dev
 * sign-in /token, and /favicon.ico. Returns false for any other path.
 */
export async function commonRoute(
  req: IncomingMessage,
  res: ServerResponse,
  context: RouteContext,
  /** Whether the request came to the OPS_PORT listener. */
  onOpsPort = false,
): Promise<boolean> {
  const url = requestTarget(req);
  const path = url?.pathname;
  const ops = path === "/metrics" || path === "/stats" || path === "/online";
  if (ops && !opsAllowed(req, context.config, onOpsPort)) {
    sendJson(res, 404, { error: "not_found" });
    return true;
  }
  switch (path) {
    case "/healthz": {
      const health = await context.observability.health(() =>
        context.store.isMember("healthz", "healthz"),
      );
      sendJson(res, health.ok ? 200 : 503, health);
      return true;
    }
    case "/stats": {
      if (url?.searchParams.get("gc") === "1") globalThis.gc?.();
      const { heapUsed, rss } = process.memoryUsage();
      const { user, system } = process.cpuUsage();
      // How long the event loop was held up, since the previous /stats (which starts anew).
      const eventLoopDelayMs = {
        p99: Math.round(loopDelay.percentile(99) / 1e4) / 100,
        max: Math.round(loopDelay.max / 1e4) / 100,
      };
      loopDelay.reset();
      sendJson(res, 200, {
        ...context.stats(),
        heapUsed,
        rss,
        cpuMicros: user + system,
        eventLoopDelayMs,
      });
      return true;
    }
    case "/token": {
      if (!context.config.devSignIn) sendJson(res, 403, { error: "dev_sign_in_disabled" });
      // Only for a page on this machine: a DNS-rebinding page names its own host.
      else if (!isLoopback(req.headers.host ?? "") || !context.origins.allows(req))
        sendJson(res, 403, { error: "dev_sign_in_loopback_only" });
      else {
        const user = url?.searchParams.get("user");
        if (!isValidName(user)) sendJson(res, 400, { error: "bad_request" });
        else sendJson(res, 200, { token: mintToken(context.config.jwt, user, 3600) });
      }
      return true;
    }
    case "/metrics":
      await context.observability.metrics(res);
      return true;
    case "/online": {
      // For the admin script, guarded as /stats: who is online is nobody else's business.
      const group = url?.searchParams.get("group");
      const after = url?.searchParams.get("after") ?? undefined;
      if (!isValidName(group) || (after !== undefined && !isValidName(after)))
        sendJson(res, 400, { error: "bad_request" });
      else {
        const online = await onlineOf(context.presence, group, after);
        if (online === "unavailable") sendJson(res, 503, { error: "unavailable" });
        else sendJson(res, 200, { group, ...online });
      }
      return true;
    }
    case "/favicon.ico":
      res.writeHead(204);
      res.end();
      return true;
    default:
      return false;
  }
}

/**
 * An HTTP server for an async handler: a handler that fails is logged and answered 500 (or its
 * connection closed, if it had begun answering); nothing a request does ends the process. A
 * client gets 10 s to send its headers and 30 s for its whole request (Node's defaults are
 * 60 s and 5 min: slow clients hold sockets).
 */
export function httpServer(
  handler: (req: IncomingMessage, res: ServerResponse) => Promise<unknown>,
  log: Log,
): Server {
  const server = createServer((req, res) => {
    handler(req, res).catch((error: unknown) => {
      log.error({ event: "http.error", path: req.url, err: error }, "handling a request failed");
      if (res.headersSent) res.destroy();
      else sendJson(res, 500, { error: "internal" });
    });
  });
  server.headersTimeout = 10_000;
  server.requestTimeout = 30_000;
  return server;
}

/** What the common routes read. */
export interface RouteContext {
  config: SampleConfig;
  store: MembershipStore;
  /** Who is online: `/online?group=` answers from it, for the admin script. */
  presence: Presence;
  stats: () => object;
  observability: Observability;
  origins: Origins;
}

/**
 * Who may read /metrics, /stats and /online (how busy the server is, who is online; /stats
 * resets its event-loop figures): with OPS_PORT only its listener; with OPS_TOKEN only a request
 * bearing it; else only a request to a loopback HOST that names a loopback host.
 */
function opsAllowed(req: IncomingMessage, config: SampleConfig, onOpsPort: boolean): boolean {
  if (config.opsPort !== undefined && !onOpsPort) return false;
  if (config.opsToken !== undefined) {
    const given = Buffer.from(req.headers.authorization ?? "");
    const expected = Buffer.from(`Bearer ${config.opsToken}`);
    return given.length === expected.length && timingSafeEqual(given, expected);
  }
  // Without a token, only a request that names a loopback host: a DNS-rebinding page (its own
  // host name resolving to 127.0.0.1) or a proxy in front would name another.
  return onOpsPort || (isLoopback(config.host) && isLoopback(req.headers.host ?? ""));
}

/**
 * With OPS_PORT, a second listener (on OPS_HOST, 127.0.0.1 by default) for /metrics, /stats and
 * /healthz, so that they can stay off the public port. Resolves to how to close it.
 */
export async function listenOps(context: RouteContext, log: Log): Promise<() => Promise<void>> {
  const { config } = context;
  if (config.opsPort === undefined) return async () => {};
  const server = httpServer(async (req, res) => {
    const path = requestTarget(req)?.pathname;
    if (path === "/metrics" || path === "/stats" || path === "/online" || path === "/healthz")
      await commonRoute(req, res, context, true);
    else sendJson(res, 404, { error: "not_found" });
  }, log);
  const url = await listen(server, { host: config.opsHost, port: config.opsPort }, "OPS_PORT");
  log.info({ event: "ops.listening", url }, "metrics, stats and health on their own port");
  return () => new Promise((resolve) => server.close(() => resolve()));
}

/** Listens on the configured host and port; resolves to the server's URL. */
export async function listen(
  server: Server,
  config: Pick<SampleConfig, "host" | "port">,
  setting = "PORT",
): Promise<string> {
  server.listen(config.port, config.host);
  await new Promise<void>((resolve, reject) => {
    server.once("listening", resolve);
    server.once("error", (error: NodeJS.ErrnoException) => {
      const taken = error.code === "EADDRINUSE" || error.code === "EACCES";
      reject(
        taken
          ? new ConfigError(
              `${setting}: ${config.host}:${config.port} is ${error.code === "EACCES" ? "not ours to use" : "in use"} (another npm start?): stop what listens there, or set ${setting}`,
              { cause: error },
            )
          : error,
      );
    });
  });
  const { port } = server.address() as AddressInfo;
  const host = config.host.includes(":") ? `[${config.host}]` : config.host;
  return `http://${host}:${port}`;
}

/**
 * The origins a browser may open the hubs from (its upgrades and negotiates carry an `Origin`):
 * ALLOWED_ORIGINS, else the server's own, known once it listens. A request without an `Origin`
 * (Node, .NET and other clients that are not browsers) is allowed: the check protects browsers'
 * users from other sites' pages, which cannot leave it out.
 */
export class Origins {
  readonly #allowed: Set<string>;

  constructor(readonly config: SampleConfig) {
    this.#allowed = new Set(config.allowedOrigins);
  }

  /** Called with the server's URL once it listens. */
  listening(url: string): void {
    if (this.config.allowedOrigins.length > 0) return;
    const { port, host } = new URL(url);
    const hosts = isLoopback(host) ? ["127.0.0.1", "localhost", "[::1]"] : [host];
    for (const name of hosts) this.#allowed.add(`http://${name.replace(/:\d+$/, "")}:${port}`);
  }

  allows(request: IncomingMessage): boolean {
    const { origin } = request.headers;
    return origin === undefined || this.#allowed.has(origin);
  }
}
