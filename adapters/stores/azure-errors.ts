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
 * Maps what the storage answered to the contract's codes, after the SDK's own retries:
 * - no answer at all (connection refused or reset, DNS, timeout), throttling (408, 429) and
 *   server faults (5xx): `STORE_UNAVAILABLE`, transient;
 * - 401 and 403 (a wrong key, a SAS expired or without a permission): `ACCESS_DENIED`;
 * - any other status (an unexpected 400, a missing table): `STORE_REJECTED`.
 * Errors that are not the storage's (a bug, a `MembershipError`) are returned untouched.
 */
export function toStoreError(error: unknown): unknown {
  if (error instanceof MembershipError) return error;
  if (error === null || typeof error !== "object" || (error as Error).name !== "RestError") {
    return error;
  }
  const status = statusOf(error);
  const what = storageErrorCode(error) ?? status ?? (error as Error).message;
  if (typeof status !== "number" || status === 408 || status === 429 || status >= 500) {
    return new MembershipError("STORE_UNAVAILABLE", `Azure Table Storage is unavailable: ${what}`, {
      cause: error,
    });
  }
  if (status === 401 || status === 403) {
    return new MembershipError(
      "ACCESS_DENIED",
      `Azure Table Storage refused the account key or SAS (${what}): check the key, and the ` +
        "SAS's expiry and permissions (query, add, update, delete)",
      { cause: error },
    );
  }
  return new MembershipError(
    "STORE_REJECTED",
    `Azure Table Storage refused the request (${status} ${what})`,
    { cause: error },
  );
}
