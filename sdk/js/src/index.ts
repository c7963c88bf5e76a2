/**
 * The Far Mesh client: stream tokens with their running cost, resume dropped connections, never bill twice.
 */

export { type Balance, type ChatOptions, FarMesh, type MeshStatus, type Model } from "./client.js";
export {
  APIConnectionError,
  APIError,
  type APIErrorInit,
  Conflict,
  type ErrorDetail,
  errorFromResponse,
  FarMeshError,
  Forbidden,
  GenerationFailed,
  InsufficientBalance,
  InvalidRequest,
  MaxPriceExceeded,
  ModelUnavailable,
  NotFound,
  PayloadTooLarge,
  RateLimited,
  RouteUnsatisfiable,
  ServiceUnavailable,
  Unauthorized,
  UnsupportedMediaType,
} from "./errors.js";
export { DEFAULT_RETRY, type FarMeshOptions, type RetryPolicy } from "./options.js";
export type { Usage } from "./progress.js";
export type { MaxPrice, ProviderPreferences, RouteSort } from "./provider.js";
export { chatPrompt, type GenerationOptions, type Message, type ResponseFormat, type Role } from "./prompts.js";
export { TokenStream } from "./stream.js";
