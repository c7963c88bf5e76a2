/**
 * The body of a generation request, from a prompt or from chat messages.
 *
 * The native route takes one prompt; chat messages become that prompt with the template the gateway's
 * OpenAI-compatible chat route uses (one `Role: content` line per message, then the `Assistant:` cue), so
 * `chat(messages)` on either route generates the same tokens.
 */

import type { ProviderPreferences } from "./provider.js";

export type Role = "system" | "developer" | "user" | "assistant" | "tool";

export interface Message {
  role: Role;
  content: string;
}

const ROLE_NAMES: Record<Role, string> = {
  system: "System",
  developer: "System",
  user: "User",
  assistant: "Assistant",
  tool: "Tool",
};

/**
 * Makes the tokens one JSON value, enforced token by token by the worker: `json_object` any object,
 * `json_schema` one the schema accepts (with `strict`, every keyword enforced, or the request is refused).
 */
export type ResponseFormat =
  | { type: "text" }
  | { type: "json_object" }
  | {
      type: "json_schema";
      json_schema: { name: string; schema?: Record<string, unknown>; strict?: boolean; description?: string };
    };

export interface GenerationOptions {
  model?: string;
  maxTokens?: number;
  temperature?: number;
  topP?: number;
  responseFormat?: ResponseFormat;
  /**
   * The buyer's routing preferences, sent as the body's `provider` as given: a quote above `max_price` rejects
   * `chat()` with `MaxPriceExceeded`; a request no allowed route can serve ends its stream with `RouteUnsatisfiable`.
   */
  provider?: ProviderPreferences;
  /** The idempotency key: sending it again re-attaches to the same generation instead of running it twice. */
  requestId?: string;
}

/** A fresh idempotency key. The client picks it, so a retried POST re-attaches instead of running again. */
export function newRequestId(): string {
  const bytes = new Uint8Array(16);
  globalThis.crypto.getRandomValues(bytes);
  return "req_" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function chatPrompt(messages: readonly Message[]): string {
  return (
    messages
      .map((m) => {
        const role = ROLE_NAMES[m.role];
        if (role === undefined) throw new TypeError(`unknown chat role ${JSON.stringify(m.role)}`);
        return `${role}: ${m.content}\n`;
      })
      .join("") + "Assistant:"
  );
}

function withOptions(body: Record<string, unknown>, pairs: [string, unknown][]): Record<string, unknown> {
  for (const [name, value] of pairs) if (value !== undefined && value !== null) body[name] = value;
  return body;
}

export function nativeBody(prompt: string | readonly Message[], requestId: string, o: GenerationOptions): Record<string, unknown> {
  const text = typeof prompt === "string" ? prompt : chatPrompt(prompt);
  return withOptions({ prompt: text, request_id: requestId }, [
    ["model_id", o.model],
    ["max_tokens", o.maxTokens],
    ["temperature", o.temperature],
    ["top_p", o.topP],
    ["response_format", o.responseFormat],
    ["provider", o.provider],
  ]);
}

export function openaiBody(prompt: string | readonly Message[], requestId: string, o: GenerationOptions): Record<string, unknown> {
  const messages = typeof prompt === "string" ? [{ role: "user", content: prompt }] : prompt.map((m) => ({ ...m }));
  return withOptions({ model: o.model, messages, stream: true, request_id: requestId }, [
    ["max_tokens", o.maxTokens],
    ["temperature", o.temperature],
    ["top_p", o.topP],
    ["response_format", o.responseFormat],
    ["provider", o.provider],
  ]);
}
