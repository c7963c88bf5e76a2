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
  pricePerTokenFar: string;
  /** null when no worker reported on its swarm recently: the gateway never invents a number */
  activeNodes: number | null;
  /** available or unavailable */
  status: string;
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
  snapshotTakenAt: string | null;
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

  /** Every model on sale, with its price and whether a healthy swarm serves it now. */
  async models(options: { signal?: AbortSignal } = {}): Promise<Model[]> {
    type Item = { model_id: string; price_per_token_far: string; active_nodes: number | null; status: string };
    const body = await this.transport.json<{ models: Item[] }>("GET", "/models", options.signal);
    return body.models.map((m) => ({
      modelId: m.model_id,
      pricePerTokenFar: m.price_per_token_far,
      activeNodes: m.active_nodes ?? null,
      status: m.status,
    }));
  }

  /** The swarm of `model` (the gateway's default model when omitted). */
  async meshStatus(model?: string, options: { signal?: AbortSignal } = {}): Promise<MeshStatus> {
    const query = model ? `?model_id=${encodeURIComponent(model)}` : "";
    type Body = {
      model_id: string;
      status: string;
      healthy?: boolean;
      active_nodes: number | null;
      active_sessions: number;
      price_per_token_far: string;
      snapshot_taken_at: string | null;
    };
    const b = await this.transport.json<Body>("GET", `/mesh/status${query}`, options.signal);
    return {
      modelId: b.model_id,
      status: b.status,
      healthy: b.healthy ?? b.status === "connected",
      activeNodes: b.active_nodes ?? null,
      activeSessions: b.active_sessions ?? 0,
      pricePerTokenFar: b.price_per_token_far,
      snapshotTakenAt: b.snapshot_taken_at ?? null,
    };
  }

  /** Stop a generation: "cancelling" (its stream ends with finishReason "cancelled") or "finished". */
  async cancel(requestId: string, options: { signal?: AbortSignal } = {}): Promise<string> {
    const path = `/inference/${encodeURIComponent(requestId)}/cancel`;
    return (await this.transport.json<{ status: string }>("POST", path, options.signal)).status;
  }
}
