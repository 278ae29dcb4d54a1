import { MembershipError } from "../contract.js";

/** The storage error code, wherever the SDK put it (`details.errorCode` or, in transactions, `code`). */
export function storageErrorCode(error: unknown): string | undefined {
  const e = error as { details?: { errorCode?: unknown }; code?: unknown } | null;
  const code = e?.details?.errorCode ?? e?.code;
  return typeof code === "string" ? code : undefined;
}

const statusOf = (error: unknown) => (error as { statusCode?: unknown } | null)?.statusCode;

/** The entity (or, in a transaction, one of them) does not exist. */
export const isNotFound = (error: unknown) =>
  statusOf(error) === 404 && storageErrorCode(error) === "ResourceNotFound";

/** The entity changed since it was read (its ETag no longer matches). */
export const isChanged = (error: unknown) =>
  statusOf(error) === 412 && storageErrorCode(error) === "UpdateConditionNotSatisfied";

/**
 * Maps the storage failures this package understands to `STORE_UNAVAILABLE`: no answer at all
 * (connection refused or reset, DNS, timeout), throttling (408, 429) and server faults (5xx),
 * all after the SDK's own retries. Anything else (a 403 from a wrong key, a 400) is a bug or a
 * misconfiguration and is returned untouched, to be rethrown as it is.
 */
export function toStoreError(error: unknown): unknown {
  if (error instanceof MembershipError) return error;
  if (error === null || typeof error !== "object" || (error as Error).name !== "RestError") {
    return error;
  }
  const status = statusOf(error);
  if (
    status === undefined ||
    status === 408 ||
    status === 429 ||
    (typeof status === "number" && status >= 500)
  ) {
    const code = storageErrorCode(error);
    return new MembershipError(
      "STORE_UNAVAILABLE",
      `Azure Table Storage is unavailable: ${code ?? status ?? (error as Error).message}`,
      { cause: error },
    );
  }
  return error;
}
