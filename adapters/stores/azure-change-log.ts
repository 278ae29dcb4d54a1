import { randomBytes } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { odata, type TableClient, type TransactionAction } from "@azure/data-tables";
import type { ChangeFeed, MembershipChange, MembershipUpdate } from "../contract.js";
import { stampWritten } from "../diagnostics.js";
import { FeedSubscribers } from "../listeners.js";
import { shardOf } from "../shard.js";
import { removedChange } from "../validate.js";
import { isChanged, isNotFound, storageErrorCode } from "./azure-errors.js";

export interface TableChangeLogOptions {
  /** Resolves once the table exists (the store creates it on first use). */
  ready: () => Promise<void>;
  /** Poll interval while changes flow. */
  pollIntervalMs: number;
  /** Poll interval once nothing has changed for `idleAfterMs`. */
  idlePollIntervalMs: number;
  retentionMs: number;
}

/** Partitions of the log: a user's changes all go to one, so their order holds. */
export const CHANGE_LOG_SHARDS = 4;
const HEAD = "head";
/** 99 changes and the head row: one transaction's 100 actions. */
const MAX_PER_APPEND = 99;
const IDLE_AFTER_MS = 5_000;

export const changeLogPartition = (shard: number) => `c:${shard}`;
const seqKey = (seq: number) => seq.toString().padStart(16, "0");

interface QueuedAppend {
  updates: MembershipUpdate[];
  resolve: () => void;
  reject: (error: unknown) => void;
}

interface LogRow {
  [property: string]: unknown;
  partitionKey: string;
  rowKey: string;
  /** On the head row only: the last sequence number (data rows have it as their RowKey). */
  seq?: number;
  writer?: string;
  change?: string;
  userId?: string;
  group?: string;
  expiresAt?: Date;
  pending?: boolean;
  /** A removal's reason, when not the default (`revoked`). */
  reason?: string;
  timestamp?: string;
}

/**
 * The table's own {@link ChangeFeed}: four partitions `c:0` to `c:3` of the membership table.
 *
 * Each partition is a gapless sequence. Its `head` row holds the last sequence number; an append
 * is one transaction that moves the head (conditional on its ETag) and inserts the rows that
 * follow it, so rows appear atomically and in order, and a writer's clock plays no part. A poll
 * is one keyed range read per partition, `RowKey gt <cursor>`: it returns the new rows and the
 * head row (`head` sorts after the digits), so it costs requests and rows in proportion to the
 * new changes, never to the retained log. A gap between the cursor and the first row, or a head
 * beyond the last row, means history was trimmed before it was read: the reader says `resync`.
 * A reader starts from the heads as they are, and says `resync` once it has them (changes made
 * between `subscribe` and that first read are covered by it).
 * Rows older than the retention (by the storage's `Timestamp`) are deleted in transactions of
 * 100 by the pollers, oldest first, reading only the rows they delete and one page more.
 */
export class TableChangeLog implements ChangeFeed {
  readonly kind = "table-log";
  readonly writer = randomBytes(6).toString("base64url");
  readonly #client: TableClient;
  readonly #options: TableChangeLogOptions;
  readonly #subscribers = new FeedSubscribers(
    () => this.#start(),
    () => this.#stop(),
  );
  /** The last head this writer saw per partition: appends skip reading it while it holds. */
  readonly #heads: Array<{ seq: number; etag: string } | undefined> = [];
  /** Changes waiting to be appended, per partition, and whether a drain is running. */
  readonly #queues: QueuedAppend[][] = [];
  readonly #draining: boolean[] = [];
  #cursors: number[] | undefined;
  #timer: NodeJS.Timeout | undefined;
  #generation = 0;
  #lastChange = 0;
  #lastTrim = Date.now();

  constructor(client: TableClient, options: TableChangeLogOptions) {
    this.#client = client;
    this.#options = options;
  }

  async publish(updates: readonly MembershipUpdate[]): Promise<void> {
    if (updates.length === 0) return;
    await this.#options.ready();
    const byShard = new Map<number, MembershipUpdate[]>();
    for (const update of updates) {
      const shard = shardOf(update.userId, CHANGE_LOG_SHARDS);
      const list = byShard.get(shard);
      if (list) list.push(update);
      else byShard.set(shard, [update]);
    }
    this.#lastChange = Date.now();
    const done: Array<Promise<void>> = [];
    for (const [shard, list] of byShard) {
      this.#queues[shard] ??= [];
      const queue = this.#queues[shard];
      for (let i = 0; i < list.length; i += MAX_PER_APPEND) {
        done.push(
          new Promise((resolve, reject) =>
            queue.push({ updates: list.slice(i, i + MAX_PER_APPEND), resolve, reject }),
          ),
        );
      }
      void this.#drain(shard);
    }
    await Promise.all(done);
  }

  /**
   * Appends a partition's queue in order, one transaction at a time: what queued up while one
   * was in flight goes together in the next (up to 99 changes), so concurrent writes of this
   * process share round trips instead of each waiting for its own.
   */
  async #drain(shard: number): Promise<void> {
    if (this.#draining[shard]) return;
    this.#draining[shard] = true;
    const queue = this.#queues[shard] ?? [];
    try {
      while (queue.length > 0) {
        const batch = [queue.shift() as QueuedAppend];
        let size = batch[0]?.updates.length ?? 0;
        while (queue.length > 0 && size + (queue[0]?.updates.length ?? 0) <= MAX_PER_APPEND) {
          const next = queue.shift() as QueuedAppend;
          size += next.updates.length;
          batch.push(next);
        }
        try {
          await this.#append(
            shard,
            batch.flatMap((item) => item.updates),
          );
          for (const item of batch) item.resolve();
        } catch (error) {
          for (const item of batch) item.reject(error);
        }
      }
    } finally {
      this.#draining[shard] = false;
    }
  }

  subscribe(
    listener: (change: MembershipChange) => void,
    onError: (error: unknown) => void,
  ): () => void {
    return this.#subscribers.subscribe(listener, onError);
  }

  async close(): Promise<void> {
    this.#subscribers.clear();
  }

  async #append(shard: number, updates: readonly MembershipUpdate[]): Promise<void> {
    const partitionKey = changeLogPartition(shard);
    for (let attempt = 1; ; attempt++) {
      const head = this.#heads[shard] ?? (await this.#readHead(partitionKey));
      const last = (head?.seq ?? 0) + updates.length;
      const headRow = { partitionKey, rowKey: HEAD, seq: last };
      const actions: TransactionAction[] = [
        head ? ["update", headRow, "Replace", { etag: head.etag }] : ["create", headRow],
        ...updates.map(
          (update, i): TransactionAction => [
            "create",
            this.#row(partitionKey, last - updates.length + 1 + i, update),
          ],
        ),
      ];
      try {
        const response = await this.#client.submitTransaction(actions);
        const etag = response.subResponses[0]?.etag;
        this.#heads[shard] = etag ? { seq: last, etag } : undefined;
        return;
      } catch (error) {
        this.#heads[shard] = undefined;
        // Another writer moved the head first (412), or created it or a row (409): read again.
        const lost = isChanged(error) || storageErrorCode(error) === "EntityAlreadyExists";
        if (!lost || attempt >= 20) throw error;
        await sleep(Math.random() * 10 * attempt);
      }
    }
  }

  async #readHead(partitionKey: string): Promise<{ seq: number; etag: string } | undefined> {
    try {
      const row = await this.#client.getEntity<LogRow>(partitionKey, HEAD);
      return { seq: row.seq ?? 0, etag: row.etag };
    } catch (error) {
      if (isNotFound(error)) return undefined;
      throw error;
    }
  }

  #start(): void {
    this.#generation++;
    this.#cursors = undefined;
    this.#lastChange = Date.now();
    this.#schedule(0, this.#generation);
  }

  #stop(): void {
    this.#generation++;
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #schedule(delay: number, generation: number): void {
    this.#timer = setTimeout(() => {
      this.#poll(generation)
        .then(
          () => this.#subscribers.recovered(),
          // Once per outage, not once per poll; polling goes on, and the cursors hold.
          (error: unknown) => this.#subscribers.failed(error),
        )
        .finally(() => {
          if (generation !== this.#generation) return;
          const idle = Date.now() - this.#lastChange > IDLE_AFTER_MS;
          const { pollIntervalMs, idlePollIntervalMs } = this.#options;
          this.#schedule(idle ? idlePollIntervalMs : pollIntervalMs, generation);
        });
    }, delay);
  }

  async #poll(generation: number): Promise<void> {
    await this.#options.ready();
    const shards = Array.from({ length: CHANGE_LOG_SHARDS }, (_, shard) => shard);
    if (this.#cursors === undefined) {
      const heads = await Promise.all(
        shards.map((shard) => this.#readHead(changeLogPartition(shard))),
      );
      if (generation !== this.#generation) return;
      this.#cursors = heads.map((head) => head?.seq ?? 0);
      this.#subscribers.emit({ type: "resync" });
      return;
    }
    const cursors = this.#cursors;
    const reads = await Promise.all(shards.map((shard) => this.#read(shard, cursors[shard] ?? 0)));
    if (generation !== this.#generation) return;
    let resync = false;
    const updates: MembershipUpdate[] = [];
    for (const [shard, read] of reads.entries()) {
      resync ||= read.gap;
      cursors[shard] = read.cursor;
      for (const row of read.rows) {
        const update = row.writer === this.writer ? undefined : toUpdate(row);
        if (update) {
          // The storage's clock says when the row was written: the propagation lag's start.
          stampWritten(update, Date.parse(row.timestamp ?? ""));
          updates.push(update);
        }
      }
    }
    if (resync || updates.length > 0) this.#lastChange = Date.now();
    if (resync) this.#subscribers.emit({ type: "resync" });
    for (const update of updates) this.#subscribers.emit(update);
    if (Date.now() - this.#lastTrim > this.#options.retentionMs / 4) {
      this.#lastTrim = Date.now();
      await Promise.all(shards.map((shard) => this.#trim(changeLogPartition(shard))));
    }
  }

  /**
   * The rows after `cursor`, then the head (it sorts last): one keyed range read. `gap` when rows
   * after the cursor are gone (trimmed unread) or the log was reset under it.
   */
  async #read(shard: number, cursor: number) {
    const partitionKey = changeLogPartition(shard);
    const filter = odata`PartitionKey eq ${partitionKey} and RowKey gt ${seqKey(cursor)}`;
    const rows: Array<LogRow & { seq: number }> = [];
    let head: number | undefined;
    for await (const row of this.#client.listEntities<LogRow>({ queryOptions: { filter } })) {
      if (row.rowKey === HEAD) head = row.seq ?? 0;
      else rows.push({ ...row, seq: Number(row.rowKey) });
    }
    let gap = false;
    let last = cursor;
    for (const row of rows) {
      if (row.seq !== last + 1) gap = true;
      last = row.seq;
    }
    if (head === undefined || head < cursor) return { rows, gap: cursor > 0, cursor: head ?? 0 };
    // No row after the cursor, yet the head is beyond it: they were trimmed before we read them.
    if (rows.length === 0 && head > cursor) return { rows, gap: true, cursor: head };
    // A head beyond the rows read is a commit that landed during the read: next poll reads it.
    return { rows, gap, cursor: last };
  }

  async #trim(partitionKey: string): Promise<void> {
    const before = Date.now() - this.#options.retentionMs;
    const filter = odata`PartitionKey eq ${partitionKey} and RowKey lt ${HEAD}`;
    const old: Array<{ partitionKey: string; rowKey: string }> = [];
    const pages = this.#client
      .listEntities<LogRow>({ queryOptions: { filter, select: ["RowKey", "Timestamp"] } })
      .byPage({ maxPageSize: 100 });
    // Rows are in sequence order, and so in commit order: stop at the first one to keep.
    scan: for await (const page of pages) {
      for (const row of page) {
        if (Date.parse(row.timestamp ?? "") >= before) break scan;
        old.push({ partitionKey, rowKey: row.rowKey });
      }
    }
    for (let i = 0; i < old.length; i += 100) {
      const batch = old.slice(i, i + 100);
      // Several pollers may trim the same rows: one already gone fails the transaction with
      // ResourceNotFound, which only means there is less to do; the rest go one by one.
      await this.#client
        .submitTransaction(batch.map((key): TransactionAction => ["delete", key]))
        .catch(async (error: unknown) => {
          if (!isNotFound(error)) throw error;
          for (const key of batch)
            await this.#client.deleteEntity(key.partitionKey, key.rowKey).catch((e: unknown) => {
              if (!isNotFound(e)) throw e;
            });
        });
    }
  }

  #row(partitionKey: string, seq: number, update: MembershipUpdate): LogRow {
    const row: LogRow = {
      partitionKey,
      rowKey: seqKey(seq),
      writer: this.writer,
      change: update.type,
      userId: update.userId,
      group: update.group,
    };
    if (update.type === "added" && update.expiresAt) row.expiresAt = update.expiresAt;
    if (update.type === "removed" && update.pending) row.pending = true;
    if (update.type === "removed" && update.reason === "left") row.reason = "left";
    return row;
  }
}

function toUpdate(row: LogRow): MembershipUpdate | undefined {
  const { change, userId, group, expiresAt } = row;
  if (typeof userId !== "string" || typeof group !== "string") return undefined;
  if (change === "removed")
    return removedChange(
      userId,
      group,
      row.reason === "left" ? "left" : undefined,
      row.pending === true || undefined,
    );
  if (change !== "added") return undefined;
  return expiresAt instanceof Date
    ? { type: "added", userId, group, expiresAt }
    : { type: "added", userId, group };
}
