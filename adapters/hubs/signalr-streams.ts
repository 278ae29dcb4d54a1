/** Unsent bytes on a connection past which a stream waits before it takes its next item. */
/** Unsent bytes past which a stream waits before taking its next item. */
export const HIGH_WATER = 64 * 1024;
/**
 * Items (or bytes, as they came on the wire) of an upload the hub method has not taken yet, past
 * which the client is not read: a parsed item can weigh far more than its bytes.
 */
const UPLOAD_BUFFER = 10;
const UPLOAD_BUFFER_BYTES = 64 * 1024;

/** A stream from the client (`streamIds`), as the hub method reads it. */
class Upload implements AsyncIterable<unknown> {
  /** `waiting`: called when the reader waits for an item that has not come. */
  constructor(readonly waiting: () => void) {}
  readonly #items: Array<{ item: unknown; bytes: number }> = [];
  #bytes = 0;
  #ended: { error?: Error } | undefined;
  #wake: (() => void) | undefined;
  /** Resolves the client's reader, waiting for room. */
  #room: (() => void) | undefined;

  /** Takes an item; resolves once there is room for the next (the connection waits: backpressure). */
  async push(item: unknown, bytes: number): Promise<void> {
    if (this.#ended) return;
    this.#items.push({ item, bytes });
    this.#bytes += bytes;
    this.#wakeUp();
    if (this.#full())
      await new Promise<void>((resolve) => {
        this.#room = resolve;
      });
  }

  #full(): boolean {
    return this.#items.length >= UPLOAD_BUFFER || this.#bytes >= UPLOAD_BUFFER_BYTES;
  }

  end(error?: Error): void {
    if (this.#ended) return;
    this.#ended = error ? { error } : {};
    this.#wakeUp();
    this.#room?.();
  }

  #wakeUp(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<unknown> {
    try {
      for (;;) {
        const next = this.#items.shift();
        if (next !== undefined) {
          this.#bytes -= next.bytes;
          if (!this.#full()) {
            const room = this.#room;
            this.#room = undefined;
            room?.();
          }
          yield next.item;
          continue;
        }
        if (this.#ended) {
          if (this.#ended.error) throw this.#ended.error;
          return;
        }
        const arrived = new Promise<void>((resolve) => {
          this.#wake = resolve;
        });
        this.waiting();
        await arrived;
      }
    } finally {
      // A reader that stops (a break) takes no more: the client is read on, its items dropped.
      this.end();
    }
  }
}

/** What a stream sends through: the binding frames and writes its messages. */
export interface StreamSink {
  item(item: unknown): void;
  complete(error?: string): void;
  /**
   * Whether the connection has no room for another item now: its unsent bytes past
   * {@link HIGH_WATER}, or (with stateful reconnect) its unacked bytes near the replay buffer.
   */
  full(): boolean;
  /** Whether the connection can still take messages. */
  open(): boolean;
}

/**
 * SignalR streaming, both ways, per connection: server-to-client streams (a hub method that
 * returns an async iterable, invoked with `StreamInvocation`), taken one item at a time and only
 * while the connection's unsent bytes are under 64 KiB, so a slow reader does not grow the
 * server's memory; and uploads (`streamIds`), each an async iterable the hub method reads, the
 * connection not read while 10 items wait. `CancelInvocation` ends a stream; a closed connection
 * ends them all. `fail` makes the errors an upload throws (the binding's `HubError`).
 */
export class Streams {
  readonly #outgoing = new Map<string, Map<string, () => void>>();
  readonly #uploads = new Map<string, Map<string, Upload>>();

  constructor(
    readonly fail: (message: string) => Error,
    readonly maxPerConnection = 16,
  ) {}

  /** How many streams, both ways, a connection has open. */
  count(connectionId: string): number {
    return (
      (this.#outgoing.get(connectionId)?.size ?? 0) + (this.#uploads.get(connectionId)?.size ?? 0)
    );
  }

  /**
   * Opens an upload per id; the iterables to pass the hub method. Undefined if an id is in use
   * (`taken` says which others are) or the connection would pass its streams (`streaming`: the
   * invocation is a stream too).
   */
  open(
    connectionId: string,
    streamIds: readonly string[],
    streaming: boolean,
    taken: (id: string) => boolean,
    waiting: () => void,
  ): Upload[] | undefined {
    let uploads = this.#uploads.get(connectionId);
    const streams = this.count(connectionId) + streamIds.length + (streaming ? 1 : 0);
    if (streamIds.length + (streaming ? 1 : 0) > 0 && streams > this.maxPerConnection)
      return undefined;
    if (new Set(streamIds).size !== streamIds.length) return undefined;
    if (streamIds.some((id) => uploads?.has(id) || taken(id))) return undefined;
    if (uploads === undefined) {
      uploads = new Map();
      this.#uploads.set(connectionId, uploads);
    }
    const opened: Upload[] = [];
    for (const id of streamIds) {
      const upload = new Upload(waiting);
      uploads.set(id, upload);
      opened.push(upload);
    }
    return opened;
  }

  /** Whether `invocationId` names a stream of this connection to the client. */
  isStreaming(connectionId: string, invocationId: string): boolean {
    return this.#outgoing.get(connectionId)?.has(invocationId) ?? false;
  }

  /** An upload's item; resolves when the connection may be read again. Unknown ids: ignored. */
  item(
    connectionId: string,
    streamId: unknown,
    item: unknown,
    bytes: number,
  ): Promise<void> | undefined {
    if (typeof streamId !== "string") return undefined;
    return this.#uploads.get(connectionId)?.get(streamId)?.push(item, bytes);
  }

  /** The invocation that read `opened` is over: they end, and their ids are free again. */
  release(connectionId: string, streamIds: readonly string[], opened: readonly Upload[]): void {
    const uploads = this.#uploads.get(connectionId);
    streamIds.forEach((id, i) => {
      const upload = opened[i];
      upload?.end();
      // Only its own: a newer upload may have the id by now.
      if (uploads?.get(id) === upload) uploads?.delete(id);
    });
    if (uploads?.size === 0) this.#uploads.delete(connectionId);
  }

  /** An upload's completion, with the client's error if any. */
  complete(connectionId: string, streamId: string, error: unknown): void {
    const uploads = this.#uploads.get(connectionId);
    const upload = uploads?.get(streamId);
    uploads?.delete(streamId);
    if (uploads?.size === 0) this.#uploads.delete(connectionId);
    upload?.end(typeof error === "string" ? this.fail(error) : undefined);
  }

  /**
   * Sends `source`'s items as the invocation's stream, then its completion (with the error if
   * it throws). Each item waits for the connection's unsent bytes to fall under 64 KiB.
   */
  async serve(
    connectionId: string,
    invocationId: string,
    source: AsyncIterable<unknown>,
    sink: StreamSink,
    describe: (error: unknown) => string,
  ): Promise<void> {
    let outgoing = this.#outgoing.get(connectionId);
    if (outgoing === undefined) {
      outgoing = new Map();
      this.#outgoing.set(connectionId, outgoing);
    }
    let canceled = false;
    let iterator: AsyncIterator<unknown> | undefined;
    let done = false;
    // The iterator's return() may throw at once, or reject: neither may escape.
    const finish = () =>
      void Promise.resolve()
        .then(() => iterator?.return?.())
        .catch(() => undefined);
    const stop = () => {
      canceled = true;
      finish();
    };
    outgoing.set(invocationId, stop);
    let failure: string | undefined;
    try {
      iterator = source[Symbol.asyncIterator]();
      for (;;) {
        while (sink.full() && sink.open() && !canceled)
          await new Promise((resolve) => setTimeout(resolve, 10));
        if (canceled || !sink.open()) break;
        const next = await iterator.next();
        done = next.done === true;
        if (done || canceled) break;
        sink.item(next.value);
      }
    } catch (error) {
      done = true; // a generator that threw is over
      if (!canceled) failure = describe(error);
    } finally {
      if (outgoing.get(invocationId) === stop) outgoing.delete(invocationId);
      if (outgoing.size === 0) this.#outgoing.delete(connectionId);
    }
    // Ended before its end (the connection went): its finally blocks run.
    if (!done && !canceled) finish();
    // The spec: a canceled stream ends with a completion too (the client may ignore it).
    if (sink.open()) sink.complete(failure);
  }

  /** `CancelInvocation`: the stream stops. Unknown ids are ignored, as the spec asks. */
  cancel(connectionId: string, invocationId: unknown): void {
    if (typeof invocationId !== "string") return;
    this.#outgoing.get(connectionId)?.get(invocationId)?.();
  }

  /** The connection is gone: its streams stop and its uploads fail. */
  gone(connectionId: string): void {
    for (const stop of this.#outgoing.get(connectionId)?.values() ?? []) stop();
    this.#outgoing.delete(connectionId);
    for (const upload of this.#uploads.get(connectionId)?.values() ?? [])
      upload.end(this.fail("The connection closed before the stream completed."));
    this.#uploads.delete(connectionId);
  }
}

/** Whether a hub method's result is a stream (an async iterable). */
export const isStream = (value: unknown): value is AsyncIterable<unknown> =>
  typeof (value as { [Symbol.asyncIterator]?: unknown } | null)?.[Symbol.asyncIterator] ===
  "function";
