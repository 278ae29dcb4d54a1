import { randomBytes } from "node:crypto";
import { odata, type TableClient, type TransactionAction } from "@azure/data-tables";
import type { MembershipChange } from "../contract.js";
import { isNotFound } from "./azure-errors.js";
import { CHANGE_LOG_PARTITION } from "./azure-keys.js";

export interface ChangeLogOptions {
  /** Resolves once the table exists (the store creates it on first use). */
  ready: () => Promise<void>;
  pollIntervalMs: number;
  visibilityLagMs: number;
  retentionMs: number;
  deliver: (change: MembershipChange) => void;
  onError: (error: unknown) => void;
}

type LogRow = {
  partitionKey: string;
  rowKey: string;
  timestamp?: string;
  writer?: string;
  change?: string;
  userId?: string;
  group?: string;
  expiresAt?: Date;
};

const MAX_BATCH = 100;

/**
 * The change log behind cross-process `watch`: one partition of the membership table, appended
 * to by every writer and polled by every instance that has listeners.
 *
 * Polls select rows by the storage service's own `Timestamp`, never by a writer's clock, so a
 * writer whose clock is behind cannot hide its changes. A row can become visible a little after
 * its `Timestamp` (writes in flight), so each poll re-reads a `visibilityLag` window behind the
 * newest `Timestamp` it has seen and drops the row keys it already delivered. The first poll
 * replays that same window, so a change made right after `watch()` is not lost to the poll that
 * had not yet run. Rows older than `retention` are trimmed by the pollers.
 */
export class ChangeLog {
  readonly writer = randomBytes(6).toString("base64url");
  readonly #client: TableClient;
  readonly #options: ChangeLogOptions;
  #seq = 0;
  #timer: NodeJS.Timeout | undefined;
  /** Bumped by start and stop, so a poll of an earlier run never schedules another. */
  #generation = 0;
  #running = false;
  #newest: number | undefined;
  #seen = new Map<string, number>();
  #lastTrim = 0;
  #failing = false;

  constructor(client: TableClient, options: ChangeLogOptions) {
    this.#client = client;
    this.#options = options;
  }

  /** Appends `changes` in order, in transactions of at most 100 rows (one partition). */
  async append(changes: readonly MembershipChange[]): Promise<void> {
    for (let i = 0; i < changes.length; i += MAX_BATCH) {
      const actions = changes
        .slice(i, i + MAX_BATCH)
        .map((change): TransactionAction => ["create", this.#row(change)]);
      if (actions.length === 1)
        await this.#client.createEntity((actions[0] as ["create", LogRow])[1]);
      else await this.#client.submitTransaction(actions);
    }
  }

  /** Starts polling (idempotent). */
  start(): void {
    if (this.#running) return;
    this.#running = true;
    this.#generation++;
    this.#newest = undefined;
    this.#seen.clear();
    this.#schedule(0, this.#generation);
  }

  /** Stops polling (idempotent); a poll in flight finishes without delivering. */
  stop(): void {
    this.#running = false;
    this.#generation++;
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #schedule(delay: number, generation: number): void {
    this.#timer = setTimeout(() => {
      this.#poll(generation)
        .then(
          () => {
            this.#failing = false;
          },
          (error: unknown) => {
            // Report once per outage, not once per poll; polling goes on and resumes delivery.
            if (!this.#failing) this.#options.onError(error);
            this.#failing = true;
          },
        )
        .finally(() => {
          if (generation === this.#generation)
            this.#schedule(this.#options.pollIntervalMs, generation);
        });
    }, delay);
  }

  async #poll(generation: number): Promise<void> {
    const { visibilityLagMs, retentionMs } = this.#options;
    await this.#options.ready();
    const priming = this.#newest === undefined;
    const from = priming ? undefined : new Date((this.#newest as number) - visibilityLagMs);
    const filter = from
      ? odata`PartitionKey eq ${CHANGE_LOG_PARTITION} and Timestamp ge ${from}`
      : odata`PartitionKey eq ${CHANGE_LOG_PARTITION}`;
    const rows: Array<{ row: LogRow; at: number }> = [];
    let newest = this.#newest ?? Number.NEGATIVE_INFINITY;
    for await (const row of this.#client.listEntities<LogRow>({ queryOptions: { filter } })) {
      const at = Date.parse(row.timestamp ?? "");
      if (Number.isNaN(at)) continue;
      newest = Math.max(newest, at);
      if (!this.#seen.has(row.rowKey)) rows.push({ row, at });
    }
    if (generation !== this.#generation) return;
    if (newest === Number.NEGATIVE_INFINITY) return; // empty log: stay in priming mode
    this.#newest = newest;
    const windowStart = newest - visibilityLagMs;
    rows.sort((a, b) => a.at - b.at || (a.row.rowKey < b.row.rowKey ? -1 : 1));
    for (const { row, at } of rows) {
      this.#seen.set(row.rowKey, at);
      if (priming && at < windowStart) continue;
      const change = row.writer === this.writer ? undefined : toChange(row);
      if (change) this.#options.deliver(change);
    }
    for (const [rowKey, at] of this.#seen) if (at < windowStart) this.#seen.delete(rowKey);
    if (newest - this.#lastTrim > retentionMs / 4) {
      this.#lastTrim = newest;
      await this.#trim(new Date(newest - retentionMs));
    }
  }

  async #trim(before: Date): Promise<void> {
    const filter = odata`PartitionKey eq ${CHANGE_LOG_PARTITION} and Timestamp lt ${before}`;
    let batch: TransactionAction[] = [];
    const flush = async () => {
      const actions = batch;
      batch = [];
      // Several pollers may trim the same rows: a row another one already deleted fails the
      // whole transaction with ResourceNotFound, which only means there is less to trim.
      await this.#client.submitTransaction(actions).catch((error: unknown) => {
        if (!isNotFound(error)) throw error;
      });
    };
    const rows = this.#client.listEntities<LogRow>({
      queryOptions: { filter, select: ["PartitionKey", "RowKey"] },
    });
    for await (const { partitionKey, rowKey } of rows) {
      batch.push(["delete", { partitionKey, rowKey }]);
      if (batch.length === MAX_BATCH) await flush();
    }
    if (batch.length > 0) await flush();
  }

  #row(change: MembershipChange): LogRow {
    // Row keys sort roughly by time (writer clock, only a tie-breaker: polls go by Timestamp)
    // and are unique per writer and sequence number.
    const seq = (this.#seq++).toString(36).padStart(8, "0");
    const rowKey = `${Date.now().toString().padStart(15, "0")}-${this.writer}-${seq}`;
    const row: LogRow = {
      partitionKey: CHANGE_LOG_PARTITION,
      rowKey,
      writer: this.writer,
      change: change.type,
      userId: change.userId,
      group: change.group,
    };
    if (change.type === "added" && change.expiresAt) row.expiresAt = change.expiresAt;
    return row;
  }
}

function toChange(row: LogRow): MembershipChange | undefined {
  const { change, userId, group, expiresAt } = row;
  if (typeof userId !== "string" || typeof group !== "string") return undefined;
  if (change === "removed") return { type: "removed", userId, group };
  if (change !== "added") return undefined;
  return expiresAt instanceof Date
    ? { type: "added", userId, group, expiresAt }
    : { type: "added", userId, group };
}
