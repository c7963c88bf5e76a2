/**
 * Every way a call can fail, as one class per gateway error code.
 *
 * The gateway answers errors as `{"error": {"code", "message", "field", ...}}` on its native routes and in
 * OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, on `/v1`; `errorFromResponse` reads either
 * (`param` is the field) and turns it into the matching class, so callers write
 * `if (e instanceof RateLimited) await sleep(e.retryAfter)` instead of reading status codes. A failure inside a running generation (the stream's error event) is `GenerationFailed`.
 */

export interface ErrorDetail {
  loc?: (string | number)[];
  msg?: string;
  type?: string;
}

/** The base of every error this package throws. */
export class FarMeshError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The gateway could not be reached (or kept dropping the connection) after every configured retry. */
export class APIConnectionError extends FarMeshError {}

export interface APIErrorInit {
  status?: number;
  code?: string;
  field?: string | null;
  details?: ErrorDetail[];
  requestId?: string | null;
  retryAfter?: number | null;
}

/** The gateway refused a request: `status` is the HTTP status, `code` the stable machine-readable reason. */
export class APIError extends FarMeshError {
  static readonly defaultStatus: number = 0;
  readonly status: number;
  readonly code: string;
  readonly field: string | null;
  readonly details: ErrorDetail[];
  readonly requestId: string | null;

  constructor(message: string, init: APIErrorInit = {}) {
    super(message);
    this.status = init.status ?? (new.target as typeof APIError).defaultStatus;
    this.code = init.code ?? "error";
    this.field = init.field ?? null;
    this.details = init.details ?? [];
    this.requestId = init.requestId ?? null;
  }
}

/** 422 (or 400): a field is invalid; `field` names it, `details` lists every problem. */
export class InvalidRequest extends APIError {
  static override readonly defaultStatus = 422;
}
/** 401: the API key is missing, malformed or revoked. */
export class Unauthorized extends APIError {
  static override readonly defaultStatus = 401;
}
/**
 * 402 insufficient_balance: the request's most it may cost (its prompt and `maxTokens` at their prices) is more than
 * the wallet's prepaid balance has available. Deposit $FAR (`far-mesh deposits make`, or the portal's balance page) or
 * lower `maxTokens`. `availableFar` and `maxCostFar` are the gateway's figures (decimal strings) when it sent them: its
 * native error body does, OpenAI's shape has no room for them.
 */
export class InsufficientBalance extends APIError {
  static override readonly defaultStatus = 402;
  readonly availableFar: string | null;
  readonly maxCostFar: string | null;
  constructor(message: string, init: APIErrorInit = {}) {
    super(message, init);
    const figures = (this.details[0] ?? {}) as Record<string, unknown>;
    this.availableFar = typeof figures.balance_far === "string" ? figures.balance_far : null;
    this.maxCostFar = typeof figures.max_cost_far === "string" ? figures.max_cost_far : null;
  }
}
/** 403: the key may not do this (e.g. `user_wallet` is not its wallet, or another key's request). */
export class Forbidden extends APIError {
  static override readonly defaultStatus = 403;
}
/** 404: unknown model, or a request id this key never submitted (or that finished over an hour ago). */
export class NotFound extends APIError {
  static override readonly defaultStatus = 404;
}
/** 409: the `requestId` belongs to another API key (choose another), or one of the subclasses below. */
export class Conflict extends APIError {
  static override readonly defaultStatus = 409;
}
/**
 * 409 max_price_exceeded: a price the gateway quotes now is above the request's `provider.max_price` (`field` names
 * which, e.g. `provider.max_price.completion`; the message gives the price and the cap). Nothing was queued or held:
 * raise the cap, or retry when `models()` quotes less.
 */
export class MaxPriceExceeded extends Conflict {}
/** 413: the request body is larger than the gateway accepts. */
export class PayloadTooLarge extends APIError {
  static override readonly defaultStatus = 413;
}
/** 415: the body was not JSON. */
export class UnsupportedMediaType extends APIError {
  static override readonly defaultStatus = 415;
}

/** 429: the key's request rate or concurrent-stream limit; `retryAfter` is the seconds the gateway asks for. */
export class RateLimited extends APIError {
  static override readonly defaultStatus = 429;
  readonly retryAfter: number | null;
  constructor(message: string, init: APIErrorInit = {}) {
    super(message, init);
    this.retryAfter = init.retryAfter ?? null;
  }
}

/** 503: the gateway cannot serve now (e.g. it lost Redis); `retryAfter` says when to try again. */
export class ServiceUnavailable extends APIError {
  static override readonly defaultStatus = 503;
  readonly retryAfter: number | null;
  constructor(message: string, init: APIErrorInit = {}) {
    super(message, init);
    this.retryAfter = init.retryAfter ?? null;
  }
}

/** 503 no_healthy_swarm: no healthy swarm serves the model right now. */
export class ModelUnavailable extends ServiceUnavailable {}

export interface GenerationFailedInit extends APIErrorInit {
  tokensGenerated?: number | null;
  totalCostFar?: string | null;
}

/**
 * The generation itself failed or was stopped (the stream's error event, a 502, or a 504 stream_deadline):
 * tokens already delivered are billed.
 */
export class GenerationFailed extends APIError {
  static override readonly defaultStatus: number = 502;
  readonly tokensGenerated: number | null;
  readonly totalCostFar: string | null;
  constructor(message: string, init: GenerationFailedInit = {}) {
    super(message, init);
    this.tokensGenerated = init.tokensGenerated ?? null;
    this.totalCostFar = init.totalCostFar ?? null;
  }
}

/**
 * route_unsatisfiable: the request's `provider` preferences (only, ignore, min_reputation, allow_fallbacks) leave
 * some of the model's blocks without an allowed server; the message names the blocks. A stream ends with it as its
 * error event (the worker fails fast rather than wait for a route); a non-streamed OpenAI route answers it as a 409.
 * Nothing is billed unless tokens were delivered; the same preferences fail the same way, so loosen them.
 */
export class RouteUnsatisfiable extends GenerationFailed {
  static override readonly defaultStatus = 409;
}

/** Error-event codes with a class of their own; every other code is a plain `GenerationFailed`. */
const STREAM_ERRORS: Record<string, typeof GenerationFailed> = { route_unsatisfiable: RouteUnsatisfiable };

/** The class a stream's error event with `code` throws. */
export function generationError(code: string): typeof GenerationFailed {
  return Object.hasOwn(STREAM_ERRORS, code) ? STREAM_ERRORS[code] : GenerationFailed;
}

const BY_STATUS: Record<number, new (message: string, init?: APIErrorInit) => APIError> = {
  400: InvalidRequest,
  401: Unauthorized,
  402: InsufficientBalance,
  403: Forbidden,
  404: NotFound,
  409: Conflict,
  413: PayloadTooLarge,
  415: UnsupportedMediaType,
  422: InvalidRequest,
  429: RateLimited,
  502: GenerationFailed,
  503: ServiceUnavailable,
  504: ServiceUnavailable,
};

/** The Retry-After header in seconds (the gateway sends integer seconds); null when absent or unreadable. */
export function retryAfterSeconds(headers: Headers): number | null {
  const value = headers.get("retry-after");
  if (value === null) return null;
  const seconds = Number(value);
  return Number.isFinite(seconds) ? Math.max(0, seconds) : null;
}

/** The typed error for a non-2xx answer, read from the gateway's JSON error body when there is one. */
export function errorFromResponse(status: number, headers: Headers, body: string, requestId?: string): APIError {
  let code = `http_${status}`;
  let message = `HTTP ${status}`;
  let field: string | null = null;
  let details: ErrorDetail[] | undefined;
  try {
    const error = (JSON.parse(body) as { error?: unknown }).error;
    if (typeof error === "string") {
      message = error;
    } else if (error && typeof error === "object") {
      const e = error as {
        code?: unknown;
        type?: unknown;
        message?: unknown;
        field?: unknown;
        param?: unknown;
        details?: unknown;
      };
      // OpenAI's shape names the field `param`, and its `code` may be null: then its `type` says most
      if (typeof e.code === "string" && e.code) code = e.code;
      else if (typeof e.type === "string" && e.type) code = e.type;
      if (typeof e.message === "string" && e.message) message = e.message;
      if (typeof e.field === "string") field = e.field;
      else if (typeof e.param === "string") field = e.param;
      if (Array.isArray(e.details)) details = e.details as ErrorDetail[];
    }
  } catch {
    const text = body.trim();
    if (text) message = `${message}: ${text.slice(0, 200)}`;
  }
  let cls = BY_STATUS[status] ?? (status >= 400 && status < 500 ? InvalidRequest : ServiceUnavailable);
  if (cls === ServiceUnavailable && code === "no_healthy_swarm") cls = ModelUnavailable;
  else if (code === "stream_deadline") cls = GenerationFailed; // 504: past the gateway's deadline, billed for its tokens
  else if (Object.hasOwn(STREAM_ERRORS, code)) cls = STREAM_ERRORS[code]; // an error event's code, as a non-streamed route's HTTP
  else if (cls === Conflict && code === "max_price_exceeded") cls = MaxPriceExceeded;
  return new cls(message, { status, code, field, details, requestId: requestId ?? null, retryAfter: retryAfterSeconds(headers) });
}
