const MAX_TIMER = 2 ** 31 - 1;

/** A client result the server waits for: ASP.NET Core's `Clients.Client(id).InvokeAsync`. */
interface Waiting {
  readonly resolve: (result: unknown) => void;
  readonly reject: (error: Error) => void;
  readonly timer: NodeJS.Timeout | undefined;
}

/**
 * The server's invocations that wait for a client's completion, by connection: each ends with
 * the client's result or error, at its timeout, or when the connection goes, whichever first.
 * `fail` makes the errors (the binding's `HubError`).
 */
export class ClientResults {
  readonly #waiting = new Map<string, Map<string, Waiting>>();
  #next = 0;

  constructor(readonly fail: (message: string) => Error) {}

  /** A new invocation id for `connectionId`, and the promise its completion settles. */
  start(
    connectionId: string,
    timeoutMs: number,
  ): { invocationId: string; result: Promise<unknown> } {
    if (!(timeoutMs > 0)) throw this.fail("timeoutMs must be a number of ms above 0.");
    const invocationId = `s${this.#next++}`;
    let waiting = this.#waiting.get(connectionId);
    if (waiting === undefined) {
      waiting = new Map();
      this.#waiting.set(connectionId, waiting);
    }
    const pending = waiting;
    const result = new Promise<unknown>((resolve, reject) => {
      // Past setTimeout's limit (about 24.8 days, or Infinity): no timeout, the close still ends it.
      const timer =
        timeoutMs <= MAX_TIMER
          ? setTimeout(() => {
              this.#settle(connectionId, invocationId);
              reject(this.fail(`The client did not answer within ${timeoutMs} ms.`));
            }, timeoutMs)
          : undefined;
      timer?.unref();
      pending.set(invocationId, { resolve, reject, timer });
    });
    return { invocationId, result };
  }

  /**
   * A completion from the client: settles the invocation it answers. False when it answers
   * none of this connection's (a late one, or one made up): ignored, as ASP.NET Core does.
   */
  complete(connectionId: string, message: Record<string, unknown>): boolean {
    const { invocationId, error, result } = message;
    if (typeof invocationId !== "string") return false;
    const waiting = this.#settle(connectionId, invocationId);
    if (waiting === undefined) return false;
    if (error !== undefined && error !== null) waiting.reject(this.fail(String(error)));
    else waiting.resolve(result ?? null);
    return true;
  }

  /** Whether `invocationId` is one this connection was asked and has not answered. */
  isPending(connectionId: string, invocationId: string): boolean {
    return this.#waiting.get(connectionId)?.has(invocationId) ?? false;
  }

  /** The connection is gone: every invocation waiting on it fails. */
  gone(connectionId: string): void {
    const waiting = this.#waiting.get(connectionId);
    this.#waiting.delete(connectionId);
    for (const { reject, timer } of waiting?.values() ?? []) {
      clearTimeout(timer);
      reject(this.fail(`Connection '${connectionId}' disconnected before it answered.`));
    }
  }

  #settle(connectionId: string, invocationId: string): Waiting | undefined {
    const waiting = this.#waiting.get(connectionId);
    const found = waiting?.get(invocationId);
    if (found === undefined) return undefined;
    clearTimeout(found.timer);
    waiting?.delete(invocationId);
    if (waiting?.size === 0) this.#waiting.delete(connectionId);
    return found;
  }
}
