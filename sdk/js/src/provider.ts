/**
 * A buyer's routing preferences for one generation: the `provider` object of OpenRouter's request shape.
 *
 *     await mesh.chat("Hi", { provider: { ignore: ["0xA1A1..."], sort: "throughput", allow_fallbacks: false,
 *                                         max_price: { completion: "0.0003" } } });
 *
 * The gateway defines the fields (its docs/routing.md, and `ProviderPreferences` in `/openapi.json`), so the
 * fields keep the wire's snake_case names, as `responseFormat`'s `json_schema` does: the object is the request
 * body's `provider` member exactly as given, and what a caller reads in the gateway's docs is what they write
 * here. The gateway judges the values: an invalid one is `InvalidRequest`, its `field` e.g. `provider.sort`.
 */

/** How the routes a request's preferences allow are ranked. */
export type RouteSort = "price" | "throughput" | "latency";

/**
 * The most the buyer pays per token, in $FAR, as decimal strings (money is never a number on the wire: the gateway
 * refuses one). A quote above either is refused with `MaxPriceExceeded`, before anything is queued.
 */
export interface MaxPrice {
  prompt?: string;
  completion?: string;
}

/** How the buyer wants its request routed through the swarm; every field optional, `{}` changes nothing. */
export interface ProviderPreferences {
  max_price?: MaxPrice;
  /** Absent: `latency`, as Petals routes; `price` ranks as `latency` (every route of a model costs the same). */
  sort?: RouteSort;
  /** Route only through these servers: libp2p peer ids, or wallets (every server announcing one). */
  only?: readonly string[];
  /** Never route through these servers (peer ids or wallets). */
  ignore?: readonly string[];
  /** false: keep to the servers of the request's first route; when one fails, end with `RouteUnsatisfiable`. */
  allow_fallbacks?: boolean;
  /** Far Mesh's own: only servers the verifier scored at least this, 0 to 1 (a server never scored counts as 0). */
  min_reputation?: number;
}
