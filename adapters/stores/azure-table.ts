import {
  isNamedKeyCredential,
  isSASCredential,
  type NamedKeyCredential,
  type SASCredential,
  type TokenCredential,
} from "@azure/core-auth";
import type { PipelinePolicy } from "@azure/core-rest-pipeline";
import {
  odata,
  TableClient,
  type TableServiceClientOptions,
  type TransactionAction,
} from "@azure/data-tables";
import pLimit from "p-limit";
import {
  type ChangeFeed,
  type Membership,
  type MembershipChange,
  MembershipError,
  type MembershipUpdate,
  type RemoveReason,
} from "../contract.js";
import { diagnostics } from "../diagnostics.js";
import { type Grant, isLive, MembershipStoreBase } from "../store-base.js";
import { addedChange, pairKey, removedChange } from "../validate.js";
import { TableChangeLog } from "./azure-change-log.js";
import { isChanged, isNotFound, storageErrorCode, toStoreError } from "./azure-errors.js";
import { groupPartition, toKey, userPartition } from "./azure-keys.js";
import { COUNT_TRIES, REPORT_REQUESTS } from "./azure-requests.js";

export type TableCredential = NamedKeyCredential | SASCredential | TokenCredential;

/** Options of {@link AzureTableMembershipStore}. */
export interface AzureTableMembershipStoreOptions {
  /** The table that holds memberships and the change log; created on first use. Default `HubMembership`. */
  tableName?: string;
  /**
   * Where changes travel between instances (`watch`). Default: the table's own log. Every
   * instance on the table must use the same kind of feed; the store is closed with the feed.
   */
  changeFeed?: ChangeFeed;
  /** Table log: how often an instance with listeners polls it while changes flow. Default 250 ms. */
  pollIntervalMs?: number;
  /** Table log: how often it polls after 5 s without a change. Default 1 s. */
  idlePollIntervalMs?: number;
  /** Table log: how long changes are kept before pollers trim them. Default 10 min. */
  changeRetentionMs?: number;
  /**
   * While watched, how often the table's kind of change feed is read again, so that a switch
   * made elsewhere (`adoptChangeFeed`) is reported to `onWatchError` within this. Default 2 s.
   */
  feedCheckIntervalMs?: number;
  /** Most requests in flight at once during `addMany`, `removeUser`, `deleteGroup` and `repair`. Default 16. */
  concurrency?: number;
  /** Passed to the `TableClient`: retry options, extra pipeline policies, ... */
  clientOptions?: TableServiceClientOptions;
  /**
   * Called once per outage of the change feed behind `watch` (delivery resumes by itself), with
   * a `MembershipError` (`STORE_UNAVAILABLE`, `ACCESS_DENIED`, or `STORE_REJECTED` when the table
   * is set up for another kind of feed). Default: a process warning.
   */
  onWatchError?: (error: unknown) => void;
}

/** One membership named in a {@link RepairReport}. */
export interface MembershipPair {
  userId: string;
  group: string;
}

/** What {@link AzureTableMembershipStore.repair} found (and, unless `dryRun`, fixed). */
export interface RepairReport {
  dryRun: boolean;
  /** Live memberships whose group-side row was missing or stale: rewritten from the user side. */
  indexRestored: MembershipPair[];
  /** Group-side rows without a user-side row: deleted (the user side is authoritative). */
  orphansRemoved: MembershipPair[];
  /** Group-side rows without a user-side row, left alone because they are younger than `minAgeMs`. */
  orphansTooRecent: number;
  /** Expired memberships whose rows were deleted from both sides. */
  expiredPurged: number;
}

type ClientOnlyOptions = Omit<AzureTableMembershipStoreOptions, "tableName" | "clientOptions">;

/** One membership row; the same shape on the user side and on the group side. */
interface Row {
  partitionKey: string;
  rowKey: string;
  etag?: string;
  userId?: string;
  group?: string;
  addedAt?: Date;
  expiresAt?: Date;
}

const MAX_BATCH = 100;
/**
 * `STORE_REJECTED`: the table is set up for another kind of change feed than the store's
 * (`"table-log"`, `"redis"`), so this store would miss the others' changes, or they its own.
 */
export class ChangeFeedMismatchError extends MembershipError {
  constructor(
    readonly tableFeed: string,
    readonly storeFeed: string,
  ) {
    super(
      "STORE_REJECTED",
      `this table's changes travel on the ${tableFeed} feed, but this store uses the ` +
        `${storeFeed} feed: every process on the table must use the same one, or the table ` +
        "be switched with adoptChangeFeed()",
    );
  }
}

/** The row that names the table's kind of change feed. */
const FEED_MARKER = { partitionKey: "c:", rowKey: "feed" };
const isHttp = (url: string) => /^http:/i.test(url);

/**
 * A {@link MembershipStore} in Azure Table Storage (or Azurite), shared by every process that
 * points at the same table.
 *
 * Layout, one table:
 * - `PartitionKey u:<user>`, `RowKey <group>`: the user side. It is **authoritative**: `isMember`
 *   and `groupsOf` (what a hub rehydrates and enforces) read only this side.
 * - `PartitionKey g:<group>`, `RowKey <user>`: the group side, an index for `membersOf`,
 *   `countMembers` and `deleteGroup`.
 * - `PartitionKey c:0` to `c:3`: the change log behind `watch`, unless another `changeFeed` is
 *   given (see {@link TableChangeLog}); `c:`/`feed` names the kind of feed the table uses.
 *
 * Write order keeps every failure on the side of less access. A grant writes the index, then the
 * authoritative row, then the log: it takes effect with the second write, and is announced only
 * after. A revoke appends to the log, deletes the authoritative row, appends again, then deletes
 * the index row: it takes effect with the delete; watchers drop access on the first entry even
 * if the delete then fails, and the second tells them it is done, so a watcher that re-reads
 * the user's groups on it cannot read them from before the delete. A crash
 * between two writes therefore never leaves a revoked membership live; it can leave an index row
 * whose authoritative row is gone (listed by `membersOf` until the same call is retried or the
 * pair is repaired). Bulk removals differ in one point, see `#removeAll`.
 */
export class AzureTableMembershipStore extends MembershipStoreBase {
  readonly #client: TableClient;
  readonly #feed: ChangeFeed;
  readonly #onWatchError: (error: unknown) => void;
  readonly #feedCheckIntervalMs: number;
  #feedChecked: Promise<void> | undefined;
  readonly #limit: ReturnType<typeof pLimit>;
  #ready: Promise<void> | undefined;

  /** Connects with a connection string (an account key, a SAS, or `UseDevelopmentStorage=true`). */
  static fromConnectionString(
    connectionString: string,
    options: AzureTableMembershipStoreOptions = {},
  ): AzureTableMembershipStore {
    const insecure =
      /(TableEndpoint=http:|UseDevelopmentStorage=true|DefaultEndpointsProtocol=http;)/i;
    let client: TableClient;
    try {
      client = TableClient.fromConnectionString(
        String(connectionString),
        options.tableName ?? "HubMembership",
        { allowInsecureConnection: insecure.test(connectionString), ...options.clientOptions },
      );
    } catch (error) {
      // The SDK's own words for a malformed one are a TypeError from deep inside it.
      throw new MembershipError(
        "INVALID_ARGUMENT",
        "not a connection string Azure Table Storage takes: expected an account name and key, " +
          "a table endpoint and a SAS, or UseDevelopmentStorage=true",
        { cause: error },
      );
    }
    return new AzureTableMembershipStore(client, options);
  }

  /** Connects to the table service at `endpoint` with any `@azure/data-tables` credential. */
  constructor(
    endpoint: string,
    credential: TableCredential,
    options?: AzureTableMembershipStoreOptions,
  );
  /** Uses a `TableClient` you configured yourself; its table holds the memberships. */
  constructor(client: TableClient, options?: ClientOnlyOptions);
  constructor(
    target: string | TableClient,
    credentialOrOptions?: TableCredential | ClientOnlyOptions,
    maybeOptions?: AzureTableMembershipStoreOptions,
  ) {
    super();
    let options: AzureTableMembershipStoreOptions;
    if (typeof target === "string") {
      options = maybeOptions ?? {};
      this.#client = createClient(target, options, credentialOrOptions as TableCredential);
    } else {
      options = (credentialOrOptions as ClientOnlyOptions | undefined) ?? {};
      this.#client = target;
    }
    if (!this.#client.pipeline.getOrderedPolicies().some((p) => p.name === ESCAPE_SEPARATORS.name))
      // First of all: the key credential's policy sets Content-Length from the body.
      this.#client.pipeline.addPolicy(ESCAPE_SEPARATORS, { phase: "Serialize" });
    if (!this.#client.pipeline.getOrderedPolicies().some((p) => p.name === REPORT_REQUESTS.name)) {
      this.#client.pipeline.addPolicy(REPORT_REQUESTS, { phase: "Serialize" });
      this.#client.pipeline.addPolicy(COUNT_TRIES, { afterPhase: "Retry" });
    }
    this.#limit = pLimit(options.concurrency ?? 16);
    const onWatchError =
      options.onWatchError ??
      ((error: unknown) =>
        process.emitWarning(`hub-membership: watching changes failed: ${String(error)}`));
    this.#onWatchError = (error) => onWatchError(toStoreError(error));
    this.#feedCheckIntervalMs = options.feedCheckIntervalMs ?? 2_000;
    this.#feed =
      options.changeFeed ??
      new TableChangeLog(this.#client, {
        ready: () => this.#ensureTable(),
        pollIntervalMs: options.pollIntervalMs ?? 250,
        idlePollIntervalMs: options.idlePollIntervalMs ?? 1_000,
        retentionMs: options.changeRetentionMs ?? 10 * 60_000,
      });
  }

  protected writeGrants(grants: readonly Grant[]): Promise<void> {
    return this.#write(async () => {
      const addedAt = new Date();
      const fields = grants.map(({ userId, group, expiresAt }) => ({
        userId,
        group,
        addedAt,
        ...(expiresAt && { expiresAt }),
      }));
      // Every index row is written before any authoritative row, and the log after both.
      await this.#upsertAll(
        fields.map((f) => ({
          partitionKey: groupPartition(f.group),
          rowKey: toKey(f.userId),
          ...f,
        })),
      );
      await this.#upsertAll(
        fields.map((f) => ({
          partitionKey: userPartition(f.userId),
          rowKey: toKey(f.group),
          ...f,
        })),
      );
      await this.#publish(grants).catch((error: unknown) => {
        // The grants are stored and live: only the announcement failed. Watchers that lost the
        // feed resync when it is back and read them; a retry announces them again.
        throw new MembershipError(
          "STORE_UNAVAILABLE",
          `stored, but not announced: ${error instanceof Error ? error.message : String(error)}; ` +
            "other processes read it once their change feed is back, and repeating it announces it",
          { cause: error },
        );
      });
    });
  }

  protected removeOne(userId: string, group: string, reason: RemoveReason): Promise<boolean> {
    return this.#write(async () => {
      const row = await this.#get(userPartition(userId), toKey(group));
      const live = row !== undefined && row.userId === userId && isLive(row, Date.now());
      if (live) await this.#publish([removedChange(userId, group, reason, true)]);
      let deleted = false;
      if (row && row.userId === userId) {
        // Conditional on the row read above: a grant that lands in between wins, rather than
        // being deleted while watchers are told "added".
        deleted = await this.#delete(row, row.etag);
        // Announced again once it is true: a watcher that re-read on the first announcement
        // may have read before the delete; this one's re-read cannot.
        if (live && deleted) await this.#publish([removedChange(userId, group, reason)]);
        // Lost to a grant: watchers that dropped access on the announcement hear the truth.
        if (live && !deleted) {
          const now = await this.#get(userPartition(userId), toKey(group));
          await this.#publish([
            now?.userId === userId && isLive(now, Date.now())
              ? addedChange(userId, group, now.expiresAt)
              : { type: "removed", userId, group },
          ]);
        }
      }
      // Also when there was no user row: a retry after a crash must finish the index side.
      await this.#delete({ partitionKey: groupPartition(group), rowKey: toKey(userId) });
      return live && deleted;
    });
  }

  protected readOne(userId: string, group: string): Promise<Membership | undefined> {
    return this.#run(async () => {
      const row = await this.#get(userPartition(userId), toKey(group));
      return row?.userId === userId ? toMembership(row) : undefined;
    });
  }

  protected readUser(userId: string): Promise<Membership[]> {
    return this.#run(async () => {
      const memberships: Membership[] = [];
      for await (const row of this.#rows(userPartition(userId)))
        if (row.userId === userId) memberships.push(toMembership(row));
      return memberships;
    });
  }

  protected async *readGroup(group: string): AsyncIterable<Membership> {
    for await (const row of this.#guarded(this.#rows(groupPartition(group))))
      if (row.group === group) yield toMembership(row);
  }

  protected async *readAll(): AsyncIterable<Membership> {
    // The user side is authoritative: every partition `u:…`, one query paging over them all.
    const filter = odata`PartitionKey ge ${"u:"} and PartitionKey lt ${"u;"}`;
    const rows = this.#client.listEntities<Row>({ queryOptions: { filter } });
    for await (const row of this.#guarded(rows))
      if (typeof row.userId === "string" && typeof row.group === "string") yield toMembership(row);
  }

  protected override countLive(group: string, now: number): Promise<number> {
    return this.#run(async () => {
      let count = 0;
      for await (const row of this.#rows(groupPartition(group), ["group", "expiresAt"]))
        if (row.group === group && isLive(row, now)) count++;
      return count;
    });
  }

  protected removeAll(side: "user" | "group", name: string): Promise<MembershipUpdate[]> {
    return side === "user"
      ? this.#removeAll(
          userPartition(name),
          (row) => row.userId === name,
          (row) => ({ partitionKey: groupPartition(row.group as string), rowKey: toKey(name) }),
        )
      : this.#removeAll(
          groupPartition(name),
          (row) => row.group === name,
          (row) => ({ partitionKey: userPartition(row.userId as string), rowKey: toKey(name) }),
        );
  }

  /**
   * Makes the two sides agree again after crashes between writes: a live user-side row gets its
   * group-side twin (re)written; a group-side row without a user-side row is deleted (the user
   * side is authoritative); expired rows are purged from both sides. Scans the whole table.
   * An orphan younger than `minAgeMs` (default 60 s) is left alone: it may be a grant in flight,
   * whose user-side write is about to land. Idempotent; safe while the store is in use.
   */
  async repair(options: { dryRun?: boolean; minAgeMs?: number } = {}): Promise<RepairReport> {
    this.assertOpen();
    const { dryRun = false, minAgeMs = 60_000 } = options;
    return this.#run(async () => {
      const now = Date.now();
      const side = async (prefix: string) => {
        const rows = new Map<string, Row>();
        const filter = odata`PartitionKey ge ${prefix} and PartitionKey lt ${`${prefix.slice(0, -1)};`}`;
        for await (const row of this.#client.listEntities<Row>({ queryOptions: { filter } })) {
          rows.set(pairKey(row.partitionKey, row.rowKey), row);
        }
        return rows;
      };
      const users = await side("u:");
      const groups = await side("g:");
      const report: RepairReport = {
        dryRun,
        indexRestored: [],
        orphansRemoved: [],
        orphansTooRecent: 0,
        expiredPurged: 0,
      };
      const work: Array<() => Promise<unknown>> = [];
      for (const row of users.values()) {
        const { userId, group } = row;
        if (typeof userId !== "string" || typeof group !== "string") continue;
        const twinKey = { partitionKey: groupPartition(group), rowKey: toKey(userId) };
        const twinPair = pairKey(twinKey.partitionKey, twinKey.rowKey);
        const twin = groups.get(twinPair);
        groups.delete(twinPair);
        if (!isLive(row, now)) {
          report.expiredPurged++;
          work.push(
            () => this.#delete(row),
            () => this.#delete(twinKey),
          );
        } else if (
          twin?.userId !== userId ||
          twin.group !== group ||
          twin.expiresAt?.getTime() !== row.expiresAt?.getTime()
        ) {
          report.indexRestored.push({ userId, group });
          const { partitionKey: _p, rowKey: _r, etag: _e, ...fields } = row;
          work.push(() => this.#client.upsertEntity({ ...twinKey, ...fields }, "Replace"));
        }
      }
      for (const orphan of groups.values()) {
        const { userId, group } = orphan;
        if (typeof userId !== "string" || typeof group !== "string") continue;
        if (!isLive(orphan, now)) report.expiredPurged++;
        else if ((orphan.addedAt?.getTime() ?? 0) > now - minAgeMs) {
          report.orphansTooRecent++;
          continue;
        } else report.orphansRemoved.push({ userId, group });
        work.push(() => this.#delete(orphan));
      }
      if (!dryRun) await Promise.all(work.map((task) => this.#limit(task)));
      return report;
    });
  }

  protected override subscribeRemote(deliver: (change: MembershipChange) => void): () => void {
    const unsubscribe = this.#feed.subscribe(deliver, this.#onWatchError);
    // Only a wrong feed is reported from here: an outage or a refused key is the feed's to
    // report, once, as its reads fail too.
    this.#run(() => this.#checkFeed()).catch((error: unknown) => {
      if (error instanceof ChangeFeedMismatchError) this.#onWatchError(error);
    });
    // The table's feed can be switched while this store watches (`adoptChangeFeed` elsewhere):
    // from then on its changes travel where this store does not read. So the marker is read
    // again every `feedCheckIntervalMs`; a switch is reported (the watcher must stop serving),
    // and a switch back delivers a resync, since changes meanwhile went the other way.
    let switched = false;
    const check = async () => {
      const marker = (await this.#get(FEED_MARKER.partitionKey, FEED_MARKER.rowKey)) as
        | { feed?: unknown }
        | undefined;
      const feed = marker?.feed;
      if (feed !== undefined && feed !== this.#feed.kind) {
        if (switched) return;
        switched = true;
        this.#feedChecked = undefined;
        const error = new ChangeFeedMismatchError(String(feed), this.#feed.kind);
        if (diagnostics.feed.hasSubscribers) diagnostics.feed.publish({ state: "down", error });
        this.#onWatchError(error);
      } else if (switched && feed === this.#feed.kind) {
        switched = false;
        if (diagnostics.feed.hasSubscribers) diagnostics.feed.publish({ state: "up" });
        deliver({ type: "resync" });
      }
    };
    const timer = setInterval(() => {
      // An outage here is the feed's to report (its reads fail too); this check says nothing.
      this.#run(check).catch(() => undefined);
    }, this.#feedCheckIntervalMs);
    timer.unref();
    return () => {
      clearInterval(timer);
      unsubscribe();
    };
  }

  protected override closeStorage(): Promise<void> {
    return this.#feed.close();
  }

  /**
   * Checks, with one read, that the credentials are accepted and that the table is set up for
   * this store's kind of change feed (setting it up on first use). The sample calls it before it
   * listens. Throws `ACCESS_DENIED`, `STORE_REJECTED` (another feed) or `STORE_UNAVAILABLE`.
   */
  async verify(): Promise<void> {
    this.assertOpen();
    await this.#run(() => this.#checkFeed());
  }

  /**
   * Sets the table up for this store's kind of change feed, replacing the kind it had: for a
   * deliberate switch (from the table log to Redis, say). Instances check the kind once, on their
   * first write or `verify()`, so stop the others first and start them on the new feed after.
   */
  async adoptChangeFeed(): Promise<void> {
    this.assertOpen();
    await this.#run(async () => {
      await this.#client.upsertEntity({ ...FEED_MARKER, feed: this.#feed.kind }, "Replace");
      this.#feedChecked = Promise.resolve();
    });
  }

  #publish(updates: readonly MembershipUpdate[]): Promise<void> {
    return this.#feed.publish(updates);
  }

  /** A write: the table must use this store's feed before anything is written. */
  #write<T>(operation: () => Promise<T>): Promise<T> {
    return this.#run(async () => {
      await this.#checkFeed();
      return operation();
    });
  }

  /**
   * A server and an admin script on different feeds would each miss the other's changes, so the
   * table names its feed (the first store to write sets it) and a store on another refuses.
   */
  #checkFeed(): Promise<void> {
    this.#feedChecked ??= (async () => {
      let stored = (await this.#get(FEED_MARKER.partitionKey, FEED_MARKER.rowKey)) as
        | (Row & { feed?: unknown })
        | undefined;
      if (stored === undefined) {
        try {
          await this.#client.createEntity({ ...FEED_MARKER, feed: this.#feed.kind });
          return;
        } catch (error) {
          if (storageErrorCode(error) !== "EntityAlreadyExists") throw error;
          stored = await this.#get(FEED_MARKER.partitionKey, FEED_MARKER.rowKey);
        }
      }
      const feed = (stored as { feed?: unknown } | undefined)?.feed;
      if (feed !== this.#feed.kind) {
        throw new ChangeFeedMismatchError(String(feed), this.#feed.kind);
      }
    })().catch((error: unknown) => {
      this.#feedChecked = undefined;
      throw error;
    });
    return this.#feedChecked;
  }

  /**
   * Removes every row of one partition and each row's twin on the other side. The change log
   * comes first (watchers drop access at once), then the twins, one partition each, and the
   * listed partition last, in transactions of 100: it is what a retry lists to find the work
   * left, so an interrupted call always converges when repeated. For `deleteGroup` that is the
   * user side first, as in `removeFromGroup`; for `removeUser` the user side goes last, so until
   * the call completes its memberships still count (it failed, and says so).
   */
  async #removeAll(
    partitionKey: string,
    owns: (row: Row) => boolean,
    twinOf: (row: Row) => { partitionKey: string; rowKey: string },
  ): Promise<MembershipUpdate[]> {
    return this.#write(async () => {
      const now = Date.now();
      const rows: Row[] = [];
      for await (const row of this.#rows(partitionKey)) if (owns(row)) rows.push(row);
      const changes = rows
        .filter((row) => isLive(row, now))
        .map(
          (row): MembershipUpdate => ({
            type: "removed",
            userId: row.userId as string,
            group: row.group as string,
          }),
        );
      await this.#publish(changes.map((change) => ({ ...change, pending: true as const })));
      await Promise.all(rows.map((row) => this.#limit(() => this.#delete(twinOf(row)))));
      await this.#deleteBatches(rows);
      await this.#publish(changes); // confirmed, as in removeFromGroup
      return changes;
    });
  }

  /** Upserts rows: one transaction per 100 rows of a partition, `concurrency` requests at once. */
  async #upsertAll(rows: ReadonlyArray<Row & Record<string, unknown>>): Promise<void> {
    const partitions = new Map<string, Array<Row & Record<string, unknown>>>();
    for (const row of rows) {
      const partition = partitions.get(row.partitionKey);
      if (partition) partition.push(row);
      else partitions.set(row.partitionKey, [row]);
    }
    const tasks: Array<() => Promise<unknown>> = [];
    for (const partition of partitions.values()) {
      for (let i = 0; i < partition.length; i += MAX_BATCH) {
        const batch = partition.slice(i, i + MAX_BATCH);
        const [only] = batch;
        tasks.push(
          batch.length === 1 && only
            ? () => this.#client.upsertEntity(only, "Replace")
            : () =>
                this.#client.submitTransaction(
                  batch.map((row): TransactionAction => ["upsert", row, "Replace"]),
                ),
        );
      }
    }
    await Promise.all(tasks.map((task) => this.#limit(task)));
  }

  async #deleteBatches(rows: readonly Row[]): Promise<void> {
    for (let i = 0; i < rows.length; i += MAX_BATCH) {
      const batch = rows.slice(i, i + MAX_BATCH);
      const actions = batch.map(
        ({ partitionKey, rowKey }): TransactionAction => ["delete", { partitionKey, rowKey }],
      );
      try {
        await this.#client.submitTransaction(actions);
      } catch (error) {
        // One row deleted by someone else fails the whole transaction; delete one by one.
        if (!isNotFound(error)) throw error;
        await Promise.all(batch.map((row) => this.#limit(() => this.#delete(row))));
      }
    }
  }

  /** Deletes one row; `false` when it was already gone or (with `etag`) had changed. */
  async #delete(key: { partitionKey: string; rowKey: string }, etag?: string): Promise<boolean> {
    try {
      await this.#client.deleteEntity(key.partitionKey, key.rowKey, etag ? { etag } : undefined);
      return true;
    } catch (error) {
      if (isNotFound(error) || (etag && isChanged(error))) return false;
      throw error;
    }
  }

  async #get(partitionKey: string, rowKey: string): Promise<Row | undefined> {
    try {
      return await this.#client.getEntity<Row>(partitionKey, rowKey);
    } catch (error) {
      if (isNotFound(error)) return undefined;
      throw error;
    }
  }

  #rows(partitionKey: string, select?: string[]): AsyncIterable<Row> {
    const queryOptions = {
      filter: odata`PartitionKey eq ${partitionKey}`,
      ...(select && { select }),
    };
    return this.#client.listEntities<Row>({ queryOptions });
  }

  async *#guarded<T>(source: AsyncIterable<T>): AsyncIterable<T> {
    await this.#ensureTable().catch((error: unknown) => {
      throw toStoreError(error);
    });
    const iterator = source[Symbol.asyncIterator]();
    while (true) {
      let step: IteratorResult<T>;
      try {
        step = await iterator.next();
      } catch (error) {
        throw toStoreError(error);
      }
      if (step.done) return;
      yield step.value;
    }
  }

  async #run<T>(operation: () => Promise<T>): Promise<T> {
    try {
      await this.#ensureTable();
      return await operation();
    } catch (error) {
      throw toStoreError(error);
    }
  }

  #ensureTable(): Promise<void> {
    this.#ready ??= this.#client.createTable().catch((error: unknown) => {
      // A SAS scoped to one table may not create tables: go on, and let the first real request
      // report whatever is wrong.
      if (storageErrorCode(error) === "AuthorizationFailure") return;
      this.#ready = undefined;
      throw error;
    });
    return this.#ready;
  }
}

function createClient(
  url: string,
  options: AzureTableMembershipStoreOptions,
  credential: TableCredential,
) {
  const table = options.tableName ?? "HubMembership";
  const clientOptions = { allowInsecureConnection: isHttp(url), ...options.clientOptions };
  // TableClient has one overload per credential kind, so the union has to be taken apart.
  if (isNamedKeyCredential(credential))
    return new TableClient(url, table, credential, clientOptions);
  if (isSASCredential(credential)) return new TableClient(url, table, credential, clientOptions);
  return new TableClient(url, table, credential, clientOptions);
}

/**
 * Azurite finds each JSON body of a transaction with `/{+.+}+/`, and `.` stops at U+2028 and
 * U+2029, which `JSON.stringify` leaves raw: a name holding one failed every transaction it was
 * in (a 500) while single-row requests passed. Written `\u2028` in a JSON string, they read back
 * as the same characters, so every transaction body is sent that way, whichever path built it.
 * Only transactions: Azurite's single-entity parser refuses the escaped form (a 400).
 */
const ESCAPE_SEPARATORS: PipelinePolicy = {
  name: "hub-membership-escape-line-separators",
  sendRequest(request, next) {
    if (
      typeof request.body === "string" &&
      request.url.endsWith("/$batch") &&
      /[\u2028\u2029]/.test(request.body)
    ) {
      request.body = request.body.replace(/[\u2028\u2029]/g, (c) =>
        c === "\u2028" ? "\\u2028" : "\\u2029",
      );
    }
    return next(request);
  },
};

function toMembership(row: Row): Membership {
  const membership = {
    userId: row.userId as string,
    group: row.group as string,
    addedAt: row.addedAt as Date,
  };
  return row.expiresAt ? { ...membership, expiresAt: row.expiresAt } : membership;
}
