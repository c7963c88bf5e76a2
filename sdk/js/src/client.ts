/**
 * `FarMesh`: the gateway's public API as methods.
 *
 *     import { FarMesh } from "@farlabs/sdk";
 *     const mesh = new FarMesh({ apiKey: "..." });
 *     const stream = await mesh.chat("Explain quantum computing");
 *     for await (const token of stream) { process.stdout.write(token); }
 *
 * `chat()` sends the request at once (so a refused request throws there) and resolves to the stream of tokens.
 * The native route is the default because its events carry the running cost and resume exactly;
 * `api: "openai"` sends the same generation through `/v1/chat/completions` instead.
 */

import { type FarMeshOptions, type ResolvedOptions, resolveOptions } from "./options.js";
import { type GenerationOptions, type Message, nativeBody, newRequestId, openaiBody } from "./prompts.js";
import { type Submission, TokenStream } from "./stream.js";
import { Transport } from "./transport.js";

export interface ChatOptions extends GenerationOptions {
  /** "native" (default: running cost and exact resume) or "openai" (needs `model`). */
  api?: "native" | "openai";
  /** Aborts the request and the stream; the gateway then cancels the generation after its grace period. */
  signal?: AbortSignal;
}

/** One model on sale (GET /models). Prices are decimal strings, in $FAR. */
export interface Model {
  modelId: string;
  /** The completion price (per generated token), under its older name */
  pricePerTokenFar: string;
  /** Per prompt token ("0" from a gateway older than prompt prices); billed once a token was generated */
  promptPricePerTokenFar: string;
  /** Per generated token; equals pricePerTokenFar */
  completionPricePerTokenFar: string;
  /** null when no worker reported on its swarm recently: the gateway never invents a number */
  activeNodes: number | null;
  /** available or unavailable */
  status: string;
  /** What the model is, e.g. "tiny-llama (random weights)"; null when the catalogue does not say */
  family: string | null;
  parameters: number | null;
  /** Most tokens of prompt and completion together */
  contextLength: number | null;
  license: string | null;
}

/** A model's swarm as the gateway sees it (GET /mesh/status). */
export interface MeshStatus {
  modelId: string;
  /** connected, or disconnected when no worker has published a fresh snapshot */
  status: string;
  healthy: boolean;
  activeNodes: number | null;
  activeSessions: number;
  pricePerTokenFar: string;
  promptPricePerTokenFar: string;
  completionPricePerTokenFar: string;
  snapshotTakenAt: string | null;
}

/**
 * The key's wallet's prepaid balance (GET /v1/usage's `balance`), decimal strings in $FAR: deposits credited minus
 * sessions charged, what requests in flight hold of it, what a new request may use, and whether the gateway admits
 * requests against it.
 */
export interface Balance {
  balanceFar: string;
  heldFar: string;
  availableFar: string;
  required: boolean;
}

/** The three price fields of a model as the gateway quotes them; an older gateway quotes only the first. */
type Quoted = {
  price_per_token_far: string;
  prompt_price_per_token_far?: string;
  completion_price_per_token_far?: string;
};

function prices(q: Quoted): Pick<Model, "pricePerTokenFar" | "promptPricePerTokenFar" | "completionPricePerTokenFar"> {
  return {
    pricePerTokenFar: q.price_per_token_far,
    promptPricePerTokenFar: q.prompt_price_per_token_far ?? "0",
    completionPricePerTokenFar: q.completion_price_per_token_far ?? q.price_per_token_far,
  };
}

export class FarMesh {
  readonly options: ResolvedOptions;
  private readonly transport: Transport;

  constructor(options: FarMeshOptions = {}) {
    this.options = resolveOptions(options);
    this.transport = new Transport(this.options);
  }

  get baseUrl(): string {
    return this.options.baseUrl;
  }

  /**
   * Start a generation from a prompt or chat messages; iterate the result for its tokens.
   *
   * `requestId` is the idempotency key (one is generated when omitted): sending a request id again, even from
   * another process, re-attaches to that generation instead of running and billing it twice.
   */
  async chat(prompt: string | readonly Message[], options: ChatOptions = {}): Promise<TokenStream> {
    if (typeof prompt === "string" && prompt.length === 0) throw new TypeError("prompt must not be empty");
    const requestId = options.requestId ?? newRequestId();
    let submission: Submission;
    if (options.api === "openai") {
      if (!options.model) throw new TypeError('api: "openai" needs a model; mesh.models() lists them');
      submission = { path: "/v1/chat/completions", body: openaiBody(prompt, requestId, options), requestId };
    } else {
      submission = { path: "/inference/generate", body: nativeBody(prompt, requestId, options), requestId };
    }
    return new TokenStream(this.transport, submission, options.signal).start();
  }

  /** Follow a generation started earlier (by this or another client) from its first token. */
  resume(requestId: string, options: { signal?: AbortSignal } = {}): Promise<TokenStream> {
    const submission = { path: "", body: {}, requestId, accepted: true };
    return new TokenStream(this.transport, submission, options.signal).start();
  }

  /** Every model on sale, with its prices and whether a healthy swarm serves it now. */
  async models(options: { signal?: AbortSignal } = {}): Promise<Model[]> {
    type Item = Quoted & {
      model_id: string;
      active_nodes: number | null;
      status: string;
      family?: string | null;
      parameters?: number | null;
      context_length?: number | null;
      license?: string | null;
    };
    const body = await this.transport.json<{ models: Item[] }>("GET", "/models", options.signal);
    return body.models.map((m) => ({
      modelId: m.model_id,
      ...prices(m),
      activeNodes: m.active_nodes ?? null,
      status: m.status,
      family: m.family ?? null,
      parameters: m.parameters ?? null,
      contextLength: m.context_length ?? null,
      license: m.license ?? null,
    }));
  }

  /** The swarm of `model` (the gateway's default model when omitted). */
  async meshStatus(model?: string, options: { signal?: AbortSignal } = {}): Promise<MeshStatus> {
    const query = model ? `?model_id=${encodeURIComponent(model)}` : "";
    type Body = Quoted & {
      model_id: string;
      status: string;
      healthy?: boolean;
      active_nodes: number | null;
      active_sessions: number;
      snapshot_taken_at: string | null;
    };
    const b = await this.transport.json<Body>("GET", `/mesh/status${query}`, options.signal);
    return {
      modelId: b.model_id,
      status: b.status,
      healthy: b.healthy ?? b.status === "connected",
      activeNodes: b.active_nodes ?? null,
      activeSessions: b.active_sessions ?? 0,
      ...prices(b),
      snapshotTakenAt: b.snapshot_taken_at ?? null,
    };
  }

  /** The key's wallet's prepaid balance; null while the wallet has never deposited nor been charged. */
  async balance(options: { signal?: AbortSignal } = {}): Promise<Balance | null> {
    type Body = { balance?: { balance_far: string; held_far?: string; available_far: string; required?: boolean } };
    const b = (await this.transport.json<Body>("GET", "/v1/usage", options.signal)).balance;
    if (!b) return null;
    return {
      balanceFar: b.balance_far,
      heldFar: b.held_far ?? "0",
      availableFar: b.available_far,
      required: b.required ?? false,
    };
  }

  /** Stop a generation: "cancelling" (its stream ends with finishReason "cancelled") or "finished". */
  async cancel(requestId: string, options: { signal?: AbortSignal } = {}): Promise<string> {
    const path = `/inference/${encodeURIComponent(requestId)}/cancel`;
    return (await this.transport.json<{ status: string }>("POST", path, options.signal)).status;
  }
}
