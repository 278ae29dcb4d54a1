import type { PipelinePolicy, PipelineRequest } from "@azure/core-rest-pipeline";
import { diagnostics } from "../diagnostics.js";

/** Tries of each request in flight, counted by the per-retry policy. */
const tries = new WeakMap<PipelineRequest, { count: number; throttled: boolean }>();

/** Whether an answer is Azure's "slow down": 429, 503 ServerBusy, 500 OperationTimedOut. */
const isThrottled = (status: number, code: string | undefined) =>
  status === 429 || status === 503 || (status === 500 && code === "OperationTimedOut");

/** Counts every try the SDK's retry policy makes (added after it, so it sees each one). */
export const COUNT_TRIES: PipelinePolicy = {
  name: "hub-membership-count-tries",
  async sendRequest(request, next) {
    const seen = tries.get(request);
    if (seen) seen.count++;
    const response = await next(request);
    if (seen && isThrottled(response.status, response.headers.get("x-ms-error-code")))
      seen.throttled = true;
    return response;
  },
};

/**
 * Publishes each request on `hub-membership:storage` once answered (added before the retry
 * policy, so it sees the request once, retries included). Costs nothing without subscribers.
 */
export const REPORT_REQUESTS: PipelinePolicy = {
  name: "hub-membership-report-requests",
  async sendRequest(request, next) {
    if (!diagnostics.storage.hasSubscribers) return next(request);
    const seen = { count: 0, throttled: false };
    tries.set(request, seen);
    const started = performance.now();
    const report = (status: number | undefined) =>
      diagnostics.storage.publish({
        operation: operationOf(request),
        durationMs: performance.now() - started,
        outcome:
          status === undefined || status >= 400 ? (status === 404 ? "not_found" : "error") : "ok",
        ...(status !== undefined && { status }),
        retries: Math.max(0, seen.count - 1),
        throttled: seen.throttled || (status !== undefined && isThrottled(status, undefined)),
      });
    try {
      const response = await next(request);
      report(response.status);
      return response;
    } catch (error) {
      report((error as { statusCode?: number }).statusCode);
      throw error;
    }
  },
};

/** What a Table service request does, from its method and URL. */
function operationOf(request: PipelineRequest): string {
  const path = new URL(request.url).pathname;
  if (path.endsWith("/$batch")) return "batch";
  if (path.endsWith("/Tables")) return request.method === "POST" ? "createTable" : "other";
  const entity = /\(PartitionKey=/.test(decodeURIComponent(path));
  switch (request.method) {
    case "GET":
      return entity ? "read" : "query";
    case "PUT":
      return "upsert";
    case "PATCH":
      return "update";
    case "DELETE":
      return "delete";
    case "POST":
      return "insert";
    default:
      return "other";
  }
}
