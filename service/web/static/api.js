// The service's HTTP API as the page uses it: the key header, the JSON error contract,
// Retry-After on 429/503, and following a job to its end.
//
// URLs are relative ("v1/jobs"), so the page also works under a path prefix.

const KEY_ITEM = "diffmamba.apiKey";
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const POLL_MS = 1000;
const RETRIES = 5;

export function apiKey() {
  return sessionStorage.getItem(KEY_ITEM) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_ITEM, key);
  else sessionStorage.removeItem(KEY_ITEM);
}

/** An error answer of the service: `{"error": code, "detail": text}` and its status. */
export class ApiError extends Error {
  constructor(status, code, detail, retryAfter = null) {
    super(detail);
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.retryAfter = retryAfter;
  }

  /** What a person reads: the server's detail, then its code and status. */
  describe() {
    const where = this.status ? `, HTTP ${this.status}` : "";
    return `${this.detail} (${this.code}${where})`;
  }
}

async function errorOf(response) {
  let code = `http_${response.status}`;
  let detail = response.statusText || "the request failed";
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") {
      code = body.error;
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    }
  } catch {
    // not the JSON contract (a proxy's page): keep the status line
  }
  const retry = Number.parseFloat(response.headers.get("Retry-After") || "");
  return new ApiError(response.status, code, detail, Number.isFinite(retry) ? retry : null);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * fetch() with the API key, an ApiError for any non-2xx answer, and the server's Retry-After
 * waited out (at most RETRIES times) for 429 and 503.
 */
export async function call(path, init = {}) {
  for (let attempt = 0; ; attempt++) {
    const headers = new Headers(init.headers || {});
    const key = apiKey();
    if (key) headers.set("X-API-Key", key);
    let response;
    try {
      response = await fetch(path, { ...init, headers });
    } catch (exc) {
      throw new ApiError(0, "network_error", `the server could not be reached: ${exc.message}`);
    }
    if (response.ok) return response;
    const error = await errorOf(response);
    const retryable = response.status === 429 || response.status === 503;
    if (!retryable || attempt >= RETRIES) throw error;
    await sleep(1000 * Math.min(error.retryAfter ?? 2 ** attempt, 30));
  }
}

export async function getTasks() {
  return (await call("v1/tasks")).json();
}

/** POST v1/jobs: the job JSON (202). `params`: task, and steps / seed when given. */
export async function submitJob(file, params) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") query.set(name, String(value));
  }
  const response = await call(`v1/jobs?${query}`, {
    method: "POST",
    // The server sniffs the bytes; an unknown type goes as octet-stream rather than nothing.
    headers: { "Content-Type": file.type || "application/octet-stream" },
    body: file,
  });
  return response.json();
}

export async function cancelJob(id) {
  return (await call(`v1/jobs/${id}`, { method: "DELETE" })).json();
}

/** The result: `{blob, seed, steps, timing}`; timing is the parsed Server-Timing header. */
export async function fetchResult(id) {
  const response = await call(`v1/jobs/${id}/result`);
  const header = (name) => response.headers.get(name);
  const timing = {};
  for (const part of (header("Server-Timing") || "").split(",")) {
    const match = /^\s*([\w-]+)\s*;\s*dur=([\d.]+)/.exec(part);
    if (match) timing[match[1]] = Number.parseFloat(match[2]);
  }
  return { blob: await response.blob(), seed: header("X-Seed"), steps: header("X-Steps"), timing };
}

async function poll(id, onUpdate) {
  for (;;) {
    const job = await (await call(`v1/jobs/${id}`)).json();
    onUpdate(job);
    if (TERMINAL.has(job.state)) return job;
    await sleep(POLL_MS);
  }
}

/**
 * Calls `onUpdate(job)` at each state change and progress round; resolves with the final job.
 *
 * Without a key: the server-sent events of v1/jobs/{id}/events. EventSource cannot send a
 * header, so with a key (and wherever the stream is refused or breaks for good) the job is
 * polled instead; polling also turns a refusal into a readable ApiError.
 */
export function followJob(id, onUpdate) {
  if (apiKey() || typeof EventSource === "undefined") return poll(id, onUpdate);
  return new Promise((resolve, reject) => {
    const source = new EventSource(`v1/jobs/${id}/events`);
    const handle = (event) => {
      const job = JSON.parse(event.data);
      onUpdate(job);
      if (TERMINAL.has(job.state)) {
        source.close(); // the server ends the stream here; without close() it would reconnect
        resolve(job);
      }
    };
    source.addEventListener("state", handle);
    source.addEventListener("progress", handle);
    source.addEventListener("error", () => {
      // CONNECTING: a dropped stream that EventSource retries by itself (a draining replica
      // ends it so the client reconnects elsewhere). CLOSED: refused, so ask by polling.
      if (source.readyState === EventSource.CLOSED) poll(id, onUpdate).then(resolve, reject);
    });
  });
}
