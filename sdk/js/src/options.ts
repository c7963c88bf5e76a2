/**
 * How a client is configured: where the gateway is, which key to send, how long to wait, how often to retry.
 *
 * `new FarMesh({ apiKey })` alone must work (the seed's snippet), so the base URL falls back to the
 * `FARLABS_BASE_URL` environment variable (where there is one: Node, Deno, Bun) and then to the gateway's
 * local default; the key may come from `FARLABS_API_KEY`.
 */

import { FarMeshError } from "./errors.js";

export const DEFAULT_BASE_URL = "http://localhost:8100";
export const USER_AGENT = "farlabs-js/0.1.0";

/**
 * How failed attempts are retried: network errors, dropped streams, and 502/503/504 answers.
 *
 * `maxRetries` counts consecutive failed attempts; every event received resets the count, so a long stream
 * survives any number of separate drops. The first retry is immediate (the gateway cancels a request whose
 * client stays away longer than its grace period, 5 s by default); the next ones back off exponentially from
 * `backoffMs` to `maxBackoffMs`, or wait what the gateway's Retry-After asks, whichever is longer.
 * A 429 on submitting a request is thrown as `RateLimited` with its `retryAfter`; a 429 on resuming one (it
 * already runs, and bills) is waited out for as long as Retry-After asks, then retried.
 */
export interface RetryPolicy {
  maxRetries: number;
  backoffMs: number;
  maxBackoffMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { maxRetries: 6, backoffMs: 500, maxBackoffMs: 5000 };

/** Milliseconds to wait before the attempt that follows `failures` consecutive failures (1 = the first). */
export function retryDelayMs(policy: RetryPolicy, failures: number, retryAfterS: number | null = null): number {
  let wait = failures <= 1 ? 0 : Math.min(policy.maxBackoffMs, policy.backoffMs * 2 ** (failures - 2));
  if (retryAfterS !== null) wait = Math.max(wait, Math.min(retryAfterS * 1000, policy.maxBackoffMs));
  return wait;
}

export interface FarMeshOptions {
  /** Defaults to $FARLABS_API_KEY. */
  apiKey?: string;
  /** Defaults to $FARLABS_BASE_URL, then http://localhost:8100. */
  baseUrl?: string;
  /** Longest wait for a response's headers (ms). */
  connectTimeoutMs?: number;
  /** Longest silence between two reads of a stream before it is resumed (ms); the gateway sends a keep-alive at least every 15 s. */
  readTimeoutMs?: number;
  /** Consecutive failed attempts allowed (see RetryPolicy). */
  maxRetries?: number;
  retry?: Partial<RetryPolicy>;
  /** A fetch implementation (defaults to the global one). */
  fetch?: typeof fetch;
}

export interface ResolvedOptions {
  apiKey: string;
  baseUrl: string;
  connectTimeoutMs: number;
  readTimeoutMs: number;
  retry: RetryPolicy;
  fetch: typeof fetch;
}

function env(name: string): string | undefined {
  const process = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process;
  return process?.env?.[name];
}

export function resolveOptions(options: FarMeshOptions = {}): ResolvedOptions {
  const apiKey = (options.apiKey ?? env("FARLABS_API_KEY") ?? "").trim(); // a file's trailing newline
  if (!apiKey) throw new FarMeshError("no API key: pass new FarMesh({ apiKey }) or set FARLABS_API_KEY");
  // never sent: fetch's error for a header it cannot carry quotes the header, key and all
  if (!/^[\x21-\x7e]+$/.test(apiKey)) {
    throw new FarMeshError("the API key holds spaces or characters a header cannot carry; pass it as it was issued");
  }
  const baseUrl = (options.baseUrl || env("FARLABS_BASE_URL") || DEFAULT_BASE_URL).replace(/\/+$/, "");
  if (!/^https?:\/\//.test(baseUrl)) throw new FarMeshError(`baseUrl must start with http:// or https://, got ${baseUrl}`);
  const retry = { ...DEFAULT_RETRY, ...options.retry };
  if (options.maxRetries !== undefined) retry.maxRetries = Math.max(0, options.maxRetries);
  const fetchImpl = options.fetch ?? globalThis.fetch;
  if (typeof fetchImpl !== "function") throw new FarMeshError("no fetch: use Node >= 18 or pass options.fetch");
  return {
    apiKey,
    baseUrl,
    connectTimeoutMs: options.connectTimeoutMs ?? 30_000,
    readTimeoutMs: options.readTimeoutMs ?? 60_000,
    retry,
    fetch: fetchImpl,
  };
}
