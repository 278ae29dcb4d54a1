import { subscribe, unsubscribe } from "node:diagnostics_channel";
import type { ServerResponse } from "node:http";
import { pino } from "pino";
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import type {
  ChangeAppliedEvent,
  FeedEvent,
  PresenceView,
  RehydrateEvent,
  SlowConsumerEvent,
  StorageRequestEvent,
} from "../adapters/index.js";
import { redact } from "./redact.js";

/** Structured JSON logs, one line per event (pino), on standard output. */
export type Log = pino.Logger;

/**
 * A server's logs and metrics. Metrics come from the library's diagnostics channels (storage
 * requests, changes applied and their lag, resyncs, rehydrations, slow consumers, feed outages)
 * and from what the sample counts itself (refused connections, rate limits), and are served by
 * `GET /metrics` in Prometheus's text format. Logs never carry a token or a secret: what
 * identifies a connection is its id and user id.
 */
export class Observability {
  readonly log: Log;
  #storageAnsweredAt = 0;
  #storageFailedAt = 0;
  #feedUp = true;
  #probe: Promise<void> | undefined;
  readonly registry = new Registry();
  readonly #refused: Counter<"endpoint" | "reason">;
  readonly #rateLimited: Counter<"endpoint">;
  readonly #opened: Counter<"endpoint">;
  readonly #replays: Counter<"endpoint">;
  readonly #replayed: Counter<"endpoint">;
  readonly #unrecovered: Counter<"endpoint">;
  readonly #unsubscribe: Array<() => void> = [];

  /**
   * `counts` reads the hubs' connections and groups for the gauges, per endpoint, when scraped.
   */
  constructor(counts: () => Record<string, { connections: number; groups: number }>) {
    this.log = pino({
      level: process.env.LOG_LEVEL || "info",
      base: { pid: process.pid },
      // Belt and braces: nothing logs these, and should anything ever, they are blanked.
      redact: ["token", "authorization", "accessToken", "*.token", "*.authorization"],
      // An error's text can carry a URL with a password or a SAS: blanked before it is written.
      serializers: {
        err: (error: Error) => {
          const plain = pino.stdSerializers.err(error);
          return { ...plain, message: redact(plain.message), stack: redact(plain.stack) };
        },
      },
    });
    const registry = this.registry;
    collectDefaultMetrics({ register: registry, prefix: "hub_membership_process_" });
    const storage = new Histogram({
      name: "hub_membership_storage_request_duration_seconds",
      help: "Storage requests of the membership store, retries included, by operation and outcome",
      labelNames: ["operation", "outcome"],
      buckets: [0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: [registry],
    });
    const retries = new Counter({
      name: "hub_membership_storage_retries_total",
      help: "Storage tries beyond the first, made by the SDK's retry policy",
      registers: [registry],
    });
    const throttled = new Counter({
      name: "hub_membership_storage_throttled_total",
      help: "Storage requests answered 429, 503 ServerBusy or 500 OperationTimedOut at least once",
      registers: [registry],
    });
    const lag = new Histogram({
      name: "hub_membership_propagation_lag_seconds",
      help: "From another process's store write to this server's connections joining or leaving",
      labelNames: ["type"],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [registry],
    });
    const grants = new Counter({
      name: "hub_membership_grants_applied_total",
      help: "Grants applied to this server's connections of a user",
      registers: [registry],
    });
    const revokes = new Counter({
      name: "hub_membership_revokes_applied_total",
      help: "Revokes, expiries and leaves applied to this server's connections of a user",
      labelNames: ["reason"],
      registers: [registry],
    });
    const resyncs = new Counter({
      name: "hub_membership_resyncs_total",
      help: "Re-reads of every connected user after the change feed may have missed changes",
      registers: [registry],
    });
    const rehydrate = new Histogram({
      name: "hub_membership_rehydrate_duration_seconds",
      help: "From a connection's registration to it being in its stored groups",
      labelNames: ["read"],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [registry],
    });
    const dropped = new Counter({
      name: "hub_membership_slow_consumers_dropped_total",
      help: "Connections terminated for not reading what they were sent",
      registers: [registry],
    });
    const feedUp = new Gauge({
      name: "hub_membership_change_feed_up",
      help: "1 while the store's change feed delivers, 0 during an outage",
      registers: [registry],
    });
    feedUp.set(1);
    const outages = new Counter({
      name: "hub_membership_change_feed_outages_total",
      help: "Outages of the store's change feed",
      registers: [registry],
    });
    this.#refused = new Counter({
      name: "hub_membership_connections_refused_total",
      help: "Connections refused, by endpoint and reason",
      labelNames: ["endpoint", "reason"],
      registers: [registry],
    });
    this.#opened = new Counter({
      name: "hub_membership_connections_opened_total",
      help: "Connections accepted and rehydrated, by endpoint",
      labelNames: ["endpoint"],
      registers: [registry],
    });
    this.#replays = new Counter({
      name: "hub_membership_replays_total",
      help: "Reconnects that presented a position (a resume)",
      labelNames: ["endpoint"],
      registers: [this.registry],
    });
    this.#replayed = new Counter({
      name: "hub_membership_replayed_messages_total",
      help: "Messages replayed to clients that resumed",
      labelNames: ["endpoint"],
      registers: [this.registry],
    });
    this.#unrecovered = new Counter({
      name: "hub_membership_unrecovered_groups_total",
      help: "Groups a resuming client was told recovered: false (it may have missed messages)",
      labelNames: ["endpoint"],
      registers: [this.registry],
    });
    this.#rateLimited = new Counter({
      name: "hub_membership_rate_limited_total",
      help: "Client messages refused by a rate limit",
      labelNames: ["endpoint"],
      registers: [registry],
    });
    for (const [name, field] of [
      ["hub_membership_connections", "connections"],
      ["hub_membership_groups", "groups"],
    ] as const) {
      new Gauge({
        name,
        help:
          field === "connections"
            ? "Open connections on this server, by endpoint"
            : "Groups with at least one connection on this server, by endpoint",
        labelNames: ["endpoint"],
        registers: [registry],
        collect() {
          for (const [endpoint, count] of Object.entries(counts()))
            this.set({ endpoint }, count[field]);
        },
      });
    }

    const on = <T>(name: string, handle: (event: T) => void) => {
      const listener = (message: unknown) => handle(message as T);
      subscribe(name, listener);
      this.#unsubscribe.push(() => unsubscribe(name, listener));
    };
    on<StorageRequestEvent>("hub-membership:storage", (e) => {
      if (e.outcome === "error") this.#storageFailedAt = Date.now();
      else this.#storageAnsweredAt = Date.now();
      storage.observe({ operation: e.operation, outcome: e.outcome }, e.durationMs / 1_000);
      if (e.retries > 0) retries.inc(e.retries);
      if (e.throttled) throttled.inc();
    });
    on<ChangeAppliedEvent>("hub-membership:change", (e) => {
      if (e.type === "added") grants.inc();
      else revokes.inc({ reason: e.reason ?? "revoked" });
      if (e.lagMs !== undefined) lag.observe({ type: e.type }, e.lagMs / 1_000);
      this.log.info(
        {
          event: e.type === "added" ? "membership.granted" : "membership.revoked",
          userId: e.userId,
          group: e.group,
          reason: e.reason,
          connections: e.connections,
          lagMs: e.lagMs,
        },
        e.type === "added" ? "granted" : "revoked",
      );
    });
    on("hub-membership:resync", () => resyncs.inc());
    on<RehydrateEvent>("hub-membership:rehydrate", (e) =>
      rehydrate.observe({ read: String(e.read) }, e.durationMs / 1_000),
    );
    on<SlowConsumerEvent>("hub-membership:slow-consumer", (e) => {
      dropped.inc();
      this.log.warn(
        {
          event: "connection.dropped",
          connectionId: e.connectionId,
          bufferedBytes: e.bufferedBytes,
        },
        "slow consumer dropped",
      );
    });
    on<FeedEvent>("hub-membership:feed", (e) => {
      this.#feedUp = e.state === "up";
      feedUp.set(e.state === "up" ? 1 : 0);
      if (e.state === "down") {
        outages.inc();
        this.log.error({ event: "feed.down", err: e.error }, "the change feed is down");
      } else this.log.info({ event: "feed.up" }, "the change feed is back");
    });
  }

  opened(endpoint: string, connection: { id: string; userId: string }, groups: number): void {
    this.#opened.inc({ endpoint });
    this.log.info(
      {
        event: "connection.opened",
        endpoint,
        connectionId: connection.id,
        userId: connection.userId,
        groups,
      },
      "connection opened",
    );
  }

  /** A connection resumed (or, `resumed` false, connected afresh): what it was replayed. */
  resumed(
    endpoint: string,
    report: {
      resumed: boolean;
      groups: ReadonlyArray<{ recovered: boolean; messages?: readonly unknown[] }>;
      /** Messages replayed, when the groups do not list them. */
      replayed?: number;
    },
  ): void {
    if (!report.resumed) return;
    this.#replays.inc({ endpoint });
    let replayed = report.replayed ?? 0;
    let unrecovered = 0;
    for (const group of report.groups) {
      replayed += group.messages?.length ?? 0;
      if (!group.recovered) unrecovered++;
    }
    this.#replayed.inc({ endpoint }, replayed);
    this.#unrecovered.inc({ endpoint }, unrecovered);
  }

  /** A connection ended, whoever ended it (the client, a heartbeat without answer, a limit). */
  closed(endpoint: string, connection: { id: string; userId: string }): void {
    this.log.info(
      {
        event: "connection.closed",
        endpoint,
        connectionId: connection.id,
        userId: connection.userId,
      },
      "connection closed",
    );
  }

  /** A connection refused before it opened; `userId` when the token named one. */
  refused(endpoint: string, reason: string, userId?: string): void {
    this.#refused.inc({ endpoint, reason });
    this.log.info({ event: "connection.refused", endpoint, reason, userId }, "connection refused");
  }

  /** A message over a rate limit; `closed` when the connection is closed for it. */
  rateLimited(endpoint: string, connection: { id: string; userId: string }, closed: boolean): void {
    this.#rateLimited.inc({ endpoint });
    if (closed)
      this.log.warn(
        {
          event: "connection.closed",
          endpoint,
          reason: "rate_limited",
          connectionId: connection.id,
          userId: connection.userId,
        },
        "connection closed: over the rate limit",
      );
  }

  /**
   * Whether the server can serve: storage's last answer and the change feed's state, both
   * known from the library's channels. Storage is read (`probe`, one at a time, shared by every
   * check meanwhile) only when it has not answered for 0.5 s: a flood of health checks is not a
   * flood of storage reads.
   */
  async health(probe: () => Promise<unknown>): Promise<{ ok: boolean; error?: string }> {
    if (Date.now() - this.#storageAnsweredAt > 500) {
      this.#probe ??= probe()
        .then(
          () => undefined,
          () => undefined, // its storage event says how it went
        )
        .finally(() => {
          this.#probe = undefined;
        });
      await this.#probe;
    }
    if (this.#storageFailedAt >= this.#storageAnsweredAt)
      return { ok: false, error: "store_unavailable" };
    if (!this.#feedUp) return { ok: false, error: "change_feed_down" };
    return { ok: true };
  }

  /** A client broke its protocol (a frame too large, a malformed message): its connection ends. */
  clientError(endpoint: string, connection: { id: string; userId: string }, error: Error): void {
    this.log.warn(
      {
        event: "client.protocol_error",
        endpoint,
        connectionId: connection.id,
        userId: connection.userId,
        error: error.message,
      },
      "connection closed: the client broke the protocol",
    );
  }

  /**
   * Gauges of who is online (over every server sharing the presence). Absent from a scrape when
   * the presence cannot be read: an unknown is not a zero.
   */
  observePresence(presence: Pick<PresenceView, "total">): void {
    const log = this.log;
    for (const [name, field, help] of [
      [
        "hub_membership_online_users",
        "users",
        "Users with at least one connection, on every server sharing the presence",
      ],
      [
        "hub_membership_online_connections",
        "connections",
        "Connections, on every server sharing the presence",
      ],
    ] as const) {
      new Gauge({
        name,
        help,
        registers: [this.registry],
        async collect() {
          try {
            this.set((await presence.total())[field]);
          } catch (error) {
            this.reset();
            log.warn({ event: "presence.unavailable", err: error }, "presence cannot be read");
          }
        },
      });
    }
  }

  /** Answers `GET /metrics`. */
  async metrics(res: ServerResponse): Promise<void> {
    const body = await this.registry.metrics();
    res.writeHead(200, { "content-type": this.registry.contentType, "cache-control": "no-store" });
    res.end(body);
  }

  close(): void {
    for (const stop of this.#unsubscribe.splice(0)) stop();
  }
}
