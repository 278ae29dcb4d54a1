import type { PipelinePolicy } from "@azure/core-rest-pipeline";

/** A pipeline policy that counts every storage request sent, retries included. */
export function requestCounter() {
  const counter = {
    count: 0,
    policy: {
      name: "countRequests",
      sendRequest(request, next) {
        counter.count++;
        return next(request);
      },
    } satisfies PipelinePolicy,
  };
  return counter;
}
