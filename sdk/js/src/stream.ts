/**
 * A generation as an async iterator of text tokens that survives dropped connections.
 *
 * The first attempt POSTs the request with a request id the client chose. Until the gateway has accepted it, a
 * failed attempt POSTs the same body again: the gateway re-attaches a known request id, so nothing runs or
 * bills twice. Once accepted, a dropped connection resumes with `GET /inference/{requestId}/stream` and
 * `Last-Event-ID`, so the next event is the one after the last one read: no token is lost or repeated.
 */

import { createParser, type EventSourceMessage } from "eventsource-parser";

import { APIError, errorFromResponse, FarMeshError, RateLimited } from "./errors.js";
import { retryDelayMs } from "./options.js";
import { Progress, type Usage } from "./progress.js";
import { type Attempt, bodyText, exhausted, retryable, sleep, type Transport } from "./transport.js";

/** The request that starts a generation: the native POST, or an OpenAI-compatible streaming one. */
export interface Submission {
  path: string;
  body: Record<string, unknown>;
  requestId: string;
  /** True for a generation the gateway already runs: it is followed, never submitted. */
  accepted?: boolean;
}

class ReadTimeout extends Error {}
class EndedEarly extends Error {}

/**
 * The tokens of one generation, as they are generated: `for await (const token of stream)` yields each exactly
 * once. While it runs: `requestId`, `costFar` (running, a decimal string), `tokensGenerated`; once it has ended:
 * `usage` and `finishReason`. `cancel()` stops the generation (the stream then ends with finishReason
 * "cancelled"); breaking out of the loop just hangs up (the gateway cancels a request whose client does not
 * come back within its grace period).
 */
export class TokenStream implements AsyncIterableIterator<string> {
  private readonly progress: Progress;
  private accepted: boolean;
  /** A POST went out and no answer came back: the gateway may be running (and billing) the generation. */
  private maybeAccepted = false;
  private failures = 0;
  private attempt: Attempt | null = null;
  private readonly tokens: AsyncGenerator<string, undefined, undefined>;

  constructor(
    private readonly transport: Transport,
    private readonly submission: Submission,
    private readonly signal?: AbortSignal,
  ) {
    this.progress = new Progress(submission.requestId);
    this.accepted = submission.accepted ?? false;
    this.tokens = this.generate();
  }

  get requestId(): string {
    return this.progress.requestId;
  }
  /** Running cost of the tokens yielded so far (the billed total once the stream has ended), in $FAR. */
  get costFar(): string {
    return this.progress.costFar;
  }
  get tokensGenerated(): number {
    return this.progress.tokensGenerated;
  }
  /** The billed totals, once the final event has arrived (null before). */
  get usage(): Usage | null {
    return this.progress.usage;
  }
  /** stop, length or cancelled once the stream has ended (error if it failed); null before. */
  get finishReason(): string | null {
    return this.progress.finishReason;
  }
  get finished(): boolean {
    return this.progress.finished;
  }
  get lastEventId(): string | null {
    return this.progress.lastEventId;
  }

  /** Send the request: throws the typed error now (401, 422, 429...) rather than at the first token. */
  async start(): Promise<this> {
    if (this.attempt === null) this.attempt = await this.open();
    return this;
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  next(): Promise<IteratorResult<string, undefined>> {
    return this.tokens.next();
  }

  async return(): Promise<IteratorResult<string, undefined>> {
    await this.tokens.return(undefined);
    this.hangUp();
    return { done: true, value: undefined };
  }

  /** Every remaining token, joined: the whole reply when called before iterating. */
  async text(): Promise<string> {
    let text = "";
    for await (const token of this) text += token;
    return text;
  }

  /** Ask the gateway to stop this generation: "cancelling", or "finished" when it had already ended. */
  async cancel(): Promise<string> {
    const path = `/inference/${encodeURIComponent(this.requestId)}/cancel`;
    return (await this.transport.json<{ status: string }>("POST", path)).status;
  }

  /** Hang up without reading further. */
  async close(): Promise<void> {
    await this.return();
  }

  private hangUp(): void {
    if (this.attempt !== null) {
      this.attempt.unlink();
      this.attempt.controller.abort();
    }
  }

  private nextRequest(): [string, string, { body?: unknown; headers?: Record<string, string> }] {
    if (!this.accepted) return ["POST", this.submission.path, { body: this.submission.body }];
    const headers: Record<string, string> = { Accept: "text/event-stream" };
    if (this.progress.lastEventId) headers["Last-Event-ID"] = this.progress.lastEventId;
    return ["GET", `/inference/${encodeURIComponent(this.requestId)}/stream`, { headers }];
  }

  /** Count a failed attempt: the milliseconds to wait before the next one, or throw when none is left. */
  private failed(error: unknown, retryAfter: number | null = null): number {
    this.failures += 1;
    if (this.failures > this.transport.options.retry.maxRetries) throw exhausted(error);
    return retryDelayMs(this.transport.options.retry, this.failures, retryAfter);
  }

  private rethrowIfFinal(error: unknown): void {
    if (this.signal?.aborted || error instanceof FarMeshError) throw error;
  }

  private async open(): Promise<Attempt> {
    for (;;) {
      const [method, path, init] = this.nextRequest();
      let attempt: Attempt;
      try {
        attempt = await this.transport.send(method, path, { ...init, signal: this.signal });
      } catch (error) {
        this.rethrowIfFinal(error);
        if (!this.accepted) this.maybeAccepted = true;
        await sleep(this.failed(error), this.signal);
        continue;
      }
      const { response } = attempt;
      if (response.status === 204) this.progress.finished = true; // "nothing after your last event": all was read
      if ((response.ok && response.body) || response.status === 204) {
        this.accepted = true;
        return attempt;
      }
      const text = await bodyText(attempt, this.transport.options.readTimeoutMs).catch(() => "");
      attempt.unlink();
      const error = errorFromResponse(response.status, response.headers, text, this.requestId);
      if (error instanceof RateLimited && (this.accepted || this.maybeAccepted)) {
        // resuming a running, billed generation (or reposting one whose first POST may have landed: the gateway
        // takes the rate limit before it re-attaches): wait as long as it asks rather than abandon it
        await sleep(Math.max(this.failed(error), (error.retryAfter ?? 0) * 1000), this.signal);
        continue;
      }
      if (!retryable(error)) throw error;
      const retryAfter = (error as APIError & { retryAfter?: number | null }).retryAfter ?? null;
      await sleep(this.failed(error, retryAfter), this.signal);
    }
  }

  private async *generate(): AsyncGenerator<string, undefined, undefined> {
    const progress = this.progress;
    const events: EventSourceMessage[] = [];
    const parser = createParser({ onEvent: (event) => events.push(event) });
    await this.start();
    for (;;) {
      const attempt = this.attempt as Attempt;
      if (progress.finished) {
        attempt.unlink();
        return undefined;
      }
      const reader = (attempt.response.body as ReadableStream<Uint8Array>).getReader();
      const decoder = new TextDecoder();
      parser.reset();
      let failure: unknown;
      try {
        for (;;) {
          const { done, value } = await this.read(reader, attempt.controller);
          if (done) throw new EndedEarly("the stream ended before its final event");
          events.length = 0;
          parser.feed(decoder.decode(value, { stream: true }));
          if (events.length === 0) continue;
          this.failures = 0;
          for (const event of events) {
            if (this.signal?.aborted) throw this.signal.reason;
            const token = progress.accept(event.id, event.data);
            if (token !== null) yield token;
            else if (progress.finished) return undefined;
          }
        }
      } catch (error) {
        this.rethrowIfFinal(error);
        failure = error;
      } finally {
        attempt.unlink();
        attempt.controller.abort();
        reader.cancel().catch(() => {});
      }
      await sleep(this.failed(failure), this.signal);
      this.attempt = await this.open();
    }
  }

  /** The next chunk, or a ReadTimeout when the connection stays silent longer than the gateway's keep-alives. */
  private async read(
    reader: ReadableStreamDefaultReader<Uint8Array>,
    controller: AbortController,
  ): Promise<ReadableStreamReadResult<Uint8Array>> {
    const timeoutMs = this.transport.options.readTimeoutMs;
    const timer = setTimeout(() => controller.abort(new ReadTimeout(`no data for ${timeoutMs} ms`)), timeoutMs);
    try {
      return await reader.read();
    } finally {
      clearTimeout(timer);
    }
  }
}
