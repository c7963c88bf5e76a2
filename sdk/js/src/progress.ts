/**
 * What one generation has delivered so far, read from its events.
 *
 * It accepts the native events (`{"token", "index", "cost_far", ...}`, then `{"done": true, ...}` or
 * `{"error": ...}`) and the OpenAI-compatible chunks, because a stream started on an OpenAI route resumes
 * through the native one. Token events carry their `index`, so a replay that overlaps what was already yielded
 * is skipped: a token is never yielded twice, whatever the server resends.
 */

import { generationError } from "./errors.js";

/** The totals the gateway bills for one request, from its final event. Money is a decimal string, exact. */
export interface Usage {
  promptTokens: number;
  completionTokens: number;
  totalTokens: number;
  totalCostFar: string;
  /** completed, or cancelled (only the tokens generated are billed) */
  status: string;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Json = any;

export class Progress {
  lastEventId: string | null = null;
  tokensGenerated = 0;
  costFar = "0";
  usage: Usage | null = null;
  finishReason: string | null = null;
  finished = false;

  constructor(readonly requestId: string) {}

  /** The token text `data` carries (null for anything else); records the ending, throws on an error event. */
  accept(eventId: string | undefined, data: string): string | null {
    if (this.finished || data === "[DONE]") return null;
    const event: Json = JSON.parse(data);
    if (eventId) this.lastEventId = eventId;
    const token = event.token;
    if (typeof token === "string") {
      if (event.index < this.tokensGenerated) return null; // already delivered before a reconnect
      this.tokensGenerated = event.tokens_generated;
      this.costFar = event.cost_far;
      return token;
    }
    if (Array.isArray(event.choices)) return this.acceptOpenAI(event);
    if (event.done) {
      this.finish(
        usage(event.prompt_tokens, event.tokens_generated, event.total_cost_far, event.status),
        event.finish_reason,
      );
      return null;
    }
    if (event.error !== undefined) this.fail(event);
    return null;
  }

  private acceptOpenAI(chunk: Json): string | null {
    const choice = chunk.choices[0] ?? {};
    if (chunk.usage) {
      const status: string = chunk.status ?? "completed";
      const reason = status === "cancelled" ? "cancelled" : (choice.finish_reason ?? "stop");
      const u = chunk.usage;
      this.finish(usage(u.prompt_tokens, u.completion_tokens, u.cost_far, status), reason);
      return null;
    }
    const text = choice.delta !== undefined ? choice.delta.content : choice.text;
    if (typeof text !== "string") return null;
    this.tokensGenerated += 1;
    if (typeof chunk.cost_far === "string") this.costFar = chunk.cost_far;
    return text;
  }

  private finish(u: Usage, finishReason: string): void {
    this.usage = u;
    this.finishReason = finishReason;
    this.tokensGenerated = u.completionTokens;
    this.costFar = u.totalCostFar;
    this.finished = true;
  }

  private fail(event: Json): never {
    this.finished = true;
    this.finishReason = "error";
    const error = typeof event.error === "object" && event.error !== null ? event.error : { message: String(event.error) };
    // native events say total_cost_far, the OpenAI-shaped error chunk cost_far
    const total = typeof event.total_cost_far === "string" ? event.total_cost_far : event.cost_far;
    if (typeof total === "string") this.costFar = total;
    const code = String(error.code ?? "generation_failed");
    throw new (generationError(code))(String(error.message ?? "generation failed"), {
      code,
      requestId: this.requestId,
      tokensGenerated: event.tokens_generated ?? this.tokensGenerated,
      totalCostFar: typeof total === "string" ? total : null,
    });
  }
}

function usage(prompt: number, completion: number, cost: string, status: string): Usage {
  return { promptTokens: prompt, completionTokens: completion, totalTokens: prompt + completion, totalCostFar: cost, status };
}
