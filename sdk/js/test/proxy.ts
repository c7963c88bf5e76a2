/** A TCP proxy on loopback that can drop every connection through it at once (RST), as a flaky network would. */

import { createConnection, createServer, type Server, type Socket } from "node:net";

export class DroppingProxy {
  private readonly server: Server;
  private readonly pairs = new Set<[Socket, Socket]>();
  connections = 0;
  cuts = 0;
  port = 0;
  private dropNext = false;

  constructor(private readonly targetPort: number) {
    this.server = createServer((client) => {
      const upstream = createConnection({ host: "127.0.0.1", port: this.targetPort });
      const pair: [Socket, Socket] = [client, upstream];
      this.pairs.add(pair);
      this.connections += 1;
      const forget = () => {
        this.pairs.delete(pair);
        client.destroy();
        upstream.destroy();
      };
      client.on("error", forget).on("close", forget);
      upstream.on("error", forget).on("close", forget);
      client.pipe(upstream);
      if (this.dropNext) {
        this.dropNext = false;
        upstream.once("data", () => client.resetAndDestroy()); // the answer's first bytes never reach the client
      } else {
        upstream.pipe(client);
      }
    });
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  async start(): Promise<this> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.port = (this.server.address() as { port: number }).port;
    return this;
  }

  /** The next connection forwards its request, then is reset when the answer arrives: the server acted on it,
   * and the client never learns how it answered. */
  dropNextAnswer(): void {
    this.dropNext = true;
  }

  /** Reset every open connection; the number dropped. */
  cut(): number {
    const pairs = [...this.pairs];
    this.pairs.clear();
    for (const [client, upstream] of pairs) {
      client.resetAndDestroy();
      upstream.destroy();
    }
    this.cuts += pairs.length;
    return pairs.length;
  }

  async stop(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
