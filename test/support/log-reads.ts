import type { PipelinePolicy } from "@azure/core-rest-pipeline";

/** A pipeline policy that counts the change log's queries (partitions `c:N`) and the rows they return. */
export function logReads() {
  const reads = {
    requests: 0,
    rows: 0,
    policy: {
      name: "countChangeLogReads",
      async sendRequest(request, next) {
        const response = await next(request);
        const url = decodeURIComponent(request.url);
        if (request.method === "GET" && /PartitionKey eq 'c:\d/.test(url) && /\$filter/.test(url)) {
          reads.requests++;
          const body = JSON.parse(response.bodyAsText ?? "{}") as { value?: unknown[] };
          reads.rows += body.value?.length ?? 0;
        }
        return response;
      },
    } satisfies PipelinePolicy,
  };
  return reads;
}
