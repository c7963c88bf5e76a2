/**
 * One HTTP attempt against the gateway: `fetch` with the key, a connect timeout, and the caller's AbortSignal.
 *
 * Each attempt gets its own AbortController, linked to the caller's signal, so the stream can abandon one
 * connection (a read timeout, a drop) without aborting the whole call, and a caller's abort ends everything.
 */

import { APIConnectionError, APIError, errorFromResponse } from "./errors.js";
import { type ResolvedOptions, retryDelayMs, USER_AGENT } from "./options.js";

export interface Attempt {
  response: Response;
  controller: AbortController;
  /** Stop following the caller's signal (call once the attempt is over). */
  unlink: () => void;
}

export class Transport {
  constructor(readonly options: ResolvedOptions) {}

  /** Send one request; the response (any status) and the controller that aborts its connection. */
  async send(
    method: string,
    path: string,
    init: { body?: unknown; headers?: Record<string, string>; signal?: AbortSignal } = {},
  ): Promise<Attempt> {
    const controller = new AbortController();
    const unlink = link(init.signal, controller);
    const timer = setTimeout(() => controller.abort(new Error("connect timeout")), this.options.connectTimeoutMs);
    const headers: Record<string, string> = {
      Authorization: `Bearer ${this.options.apiKey}`,
      "X-Farlabs-Client": USER_AGENT,
      ...init.headers,
    };
    if (init.body !== undefined) headers["Content-Type"] = "application/json";
    try {
      const response = await this.options.fetch(this.options.baseUrl + path, {
        method,
        headers,
        body: init.body === undefined ? undefined : JSON.stringify(init.body),
        signal: controller.signal,
      });
      return { response, controller, unlink };
    } catch (error) {
      unlink();
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }

  /** A JSON call that is safe to repeat (GET, cancel): retried on network errors and 502/503/504. */
  async json<T>(method: string, path: string, signal?: AbortSignal): Promise<T> {
    let failures = 0;
    for (;;) {
      let failure: unknown;
      try {
        const attempt = await this.send(method, path, { signal });
        const { response } = attempt;
        const text = await bodyText(attempt, this.options.readTimeoutMs).finally(attempt.unlink);
        if (response.ok) return JSON.parse(text) as T;
        const error = errorFromResponse(response.status, response.headers, text);
        if (!retryable(error)) throw error;
        failure = error;
      } catch (error) {
        if (error instanceof APIError || signal?.aborted) throw error;
        failure = error;
      }
      failures += 1;
      if (failures > this.options.retry.maxRetries) throw exhausted(failure);
      const retryAfter = failure instanceof APIError ? ((failure as { retryAfter?: number | null }).retryAfter ?? null) : null;
      await sleep(retryDelayMs(this.options.retry, failures, retryAfter), signal);
    }
  }
}

/** The body of `attempt`'s response; the connect timer ended with the headers, so one that never comes is cut by
 * `readTimeoutMs` (the attempt is aborted) instead of awaited for ever. */
export async function bodyText(attempt: Attempt, readTimeoutMs: number): Promise<string> {
  const timer = setTimeout(() => attempt.controller.abort(new Error("read timeout")), readTimeoutMs);
  try {
    return await attempt.response.text();
  } finally {
    clearTimeout(timer);
  }
}

const NOT_RETRIED = new Set(["no_healthy_swarm", "generation_failed", "stream_deadline"]);

/** A gateway or proxy hiccup worth another attempt; everything else is the caller's to handle. */
export function retryable(error: APIError): boolean {
  return [502, 503, 504].includes(error.status) && !NOT_RETRIED.has(error.code);
}

/** The error to throw once the retries are spent. */
export function exhausted(failure: unknown): Error {
  if (failure instanceof APIError) return failure;
  const detail = failure instanceof Error ? `${failure.message}${causeOf(failure)}` : String(failure);
  return new APIConnectionError(`gateway unreachable after retries: ${detail}`, { cause: failure });
}

function causeOf(error: Error): string {
  const cause = (error as { cause?: unknown }).cause;
  return cause instanceof Error ? ` (${cause.message})` : "";
}

/** Abort `controller` when `signal` aborts; returns the function that undoes the link. */
export function link(signal: AbortSignal | undefined, controller: AbortController): () => void {
  if (!signal) return () => {};
  if (signal.aborted) {
    controller.abort(signal.reason);
    return () => {};
  }
  const onAbort = () => controller.abort(signal.reason);
  signal.addEventListener("abort", onAbort, { once: true });
  return () => signal.removeEventListener("abort", onAbort);
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted) return Promise.reject(signal.reason);
  if (ms <= 0) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
