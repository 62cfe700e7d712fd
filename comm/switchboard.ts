/**
 * A {@linkcode Switchboard}: channels that cross process boundaries, after
 * Materialize's Rust `comm` crate. One switchboard per process, built from
 * the same ordered list of every node's address and this node's index.
 *
 * Routing: a sender opens one comm to its receiver's node when it first
 * sends, and keeps it until it closes; a broadcast sender opens one comm per
 * node. So there is one connection per channel per sending node (or per
 * sender clone), as in the Rust crate, without its recycling: a comm carries
 * one channel's messages in order, so a slow receiver holds back only its
 * own producers, and closing a sender is closing its comm.
 *
 * @module
 */

import { connect, listen } from "./core.ts";
import { CommClosedError } from "./errors.ts";
import { Queue, waitInLine } from "./_queue.ts";
import {
  checkDuration,
  checkSize,
  type Deferred,
  describe,
  estimateSize,
  messageOf,
  timeoutSignal,
} from "./_util.ts";
import { TO_WIRE } from "./_wire_value.ts";
import type { Comm, ConnectOptions, Listener, ListenOptions } from "./types.ts";

const DEFAULT_RENDEZVOUS_TIMEOUT = 30_000;
const DEFAULT_CAPACITY = 1024;
/**
 * Senders also wait while a receiver's queue holds more than this, by
 * `estimateSize()`: 1,024 messages of 1 MiB would be 1 GiB.
 */
const CAPACITY_BYTES = 16 * 1024 * 1024;
const SENDER_KEY = "__Sender__";
const CONTROL_KEY = "__switchboard__";

// Hooks that the classes below fill in from their static blocks, so that
// they reach each other's private parts without making them public.
let receivers: {
  create<T>(capacity: number, name: string): Receiver<T>;
  push<T>(receiver: Receiver<T>, message: T): Promise<void>;
  end<T>(receiver: Receiver<T>, reason: string): void;
};
let senders: {
  create<T>(board: Switchboard, node: number, channel: string, ticket?: string): Sender<T>;
  wire(sender: Sender<unknown>, undo: (() => void)[]): unknown;
};
let broadcastSenders: {
  create<T>(board: Switchboard, token: string, includeSelf: boolean): BroadcastSender<T>;
};
let boards: {
  channel<T>(board: Switchboard, id: string): MpscChannel<T> | undefined;
  broadcastInbox<T>(board: Switchboard, token: string): Receiver<T>;
  openProducer(board: Switchboard, node: number, channel: string, ticket?: string): Promise<Comm>;
  openBroadcast(board: Switchboard, node: number, token: string): Promise<Comm>;
};

/**
 * Raised by {@linkcode Switchboard.rendezvous} when some nodes were not
 * reachable in time; `missing` lists their ids.
 *
 * @example
 * ```ts
 * import { RendezvousError } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * const error = new RendezvousError("nodes 2 missing", [2]);
 * assertEquals(error.missing, [2]);
 * ```
 */
export class RendezvousError extends Error {
  /** The ids of the nodes that were not reached. */
  readonly missing: number[];

  /**
   * Constructs a new {@linkcode RendezvousError}.
   *
   * @param message Which nodes are missing, with their addresses.
   * @param missing Their ids.
   * @param options The `cause`, such as the last connect error.
   */
  constructor(message: string, missing: number[], options?: ErrorOptions) {
    super(message, options);
    this.name = "RendezvousError";
    this.missing = missing;
  }
}

/**
 * Raised when sending on a channel whose receiver is gone, or receiving from
 * one whose senders have all closed (iteration just ends), or when a channel
 * refuses a producer (`maxProducers`).
 *
 * @example
 * ```ts
 * import { ChannelClosedError, Switchboard } from "@x/comm";
 * import { assertRejects } from "@std/assert";
 *
 * await using board = await Switchboard.local();
 * const [tx, rx] = board.mpsc<number>();
 * await tx.close();
 * await assertRejects(() => rx.receive(), ChannelClosedError);
 * ```
 */
export class ChannelClosedError extends Error {
  /**
   * Constructs a new {@linkcode ChannelClosedError}.
   *
   * @param message Which channel, and why it is closed.
   * @param options The `cause`, where another error led to this one.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ChannelClosedError";
  }
}

/**
 * Options for {@linkcode Switchboard.create} and the constructor.
 *
 * @example
 * ```ts
 * import { Switchboard, type SwitchboardOptions } from "@x/comm";
 *
 * const options: SwitchboardOptions = { nodes: ["tcp://127.0.0.1:0"], id: 0 };
 * await using board = await Switchboard.create(options);
 * ```
 */
export interface SwitchboardOptions {
  /** Every node's address, in the same order on every node. */
  nodes: readonly string[];
  /** This node's index in `nodes`. */
  id: number;
  /** Options for the comms this node opens to others. */
  connectOptions?: ConnectOptions;
  /** Options for listening on `nodes[id]` ({@linkcode Switchboard.create}). */
  listenOptions?: ListenOptions;
}

/**
 * Options for {@linkcode Switchboard.rendezvous}.
 *
 * @example
 * ```ts
 * import { type RendezvousOptions, Switchboard } from "@x/comm";
 *
 * const options: RendezvousOptions = { timeout: 5_000 };
 * await using board = await Switchboard.local();
 * await board.rendezvous(options);
 * ```
 */
export interface RendezvousOptions {
  /**
   * Milliseconds to wait for every node.
   *
   * @default {30000}
   */
  timeout?: number;
  /**
   * Stops waiting; rendezvous rejects with the signal's reason.
   *
   * @default {undefined}
   */
  signal?: AbortSignal;
}

/**
 * Options for {@linkcode Switchboard.mpsc}.
 *
 * @example
 * ```ts
 * import { type MpscOptions, Switchboard } from "@x/comm";
 *
 * const options: MpscOptions = { maxProducers: 2 };
 * await using board = await Switchboard.local();
 * const [tx, rx] = board.mpsc(options);
 * await tx.close();
 * ```
 */
export interface MpscOptions {
  /**
   * How many senders may be open at once, counting the first one and every
   * clone, here or on other nodes. A clone past it throws, and a remote
   * sender past it is refused on its first send.
   *
   * @default {Infinity}
   */
  maxProducers?: number;
  /**
   * Messages the receiver holds before senders wait (a remote sender's comm
   * stops being read). Senders also wait while the messages held come to
   * over 16 MiB of binaries and strings.
   *
   * @default {1024}
   */
  capacity?: number;
}

/**
 * Options for {@linkcode Switchboard.broadcastTx}.
 *
 * @example
 * ```ts
 * import { type BroadcastOptions, Switchboard } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * const options: BroadcastOptions = { includeSelf: true };
 * await using board = await Switchboard.local();
 * const rx = board.broadcastRx<string>("news");
 * const tx = board.broadcastTx<string>("news", options);
 * await tx.send("hello");
 * assertEquals(await rx.receive(), "hello");
 * await tx.close();
 * ```
 */
export interface BroadcastOptions {
  /**
   * Whether this node's own `broadcastRx(token)` receives the messages too.
   *
   * @default {false}
   */
  includeSelf?: boolean;
}

/**
 * The receiving end of a channel: an async iterable of messages, which ends
 * when the channel closes.
 *
 * @example
 * ```ts
 * import { Switchboard } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * await using board = await Switchboard.local();
 * const [tx, rx] = board.mpsc<number>();
 * await tx.send(1);
 * await tx.send(2);
 * await tx.close();
 * const got: number[] = [];
 * for await (const n of rx) got.push(n);
 * assertEquals(got, [1, 2]);
 * ```
 */
export class Receiver<T> implements AsyncIterable<T> {
  #queue = new Queue<T>();
  /**
   * The estimated size of each queued message, and their sum; a lone
   * message is estimated only once a second one joins it, so that a receiver
   * that keeps up costs no estimate at all.
   */
  #sizes = new Queue<number>();
  #queuedBytes = 0;
  #waiters = new Queue<Deferred<T>>();
  #spaceWaiters: (() => void)[] = [];
  #capacity: number;
  #ended: Error | undefined;
  #describe: string;

  static {
    receivers = {
      create: <T>(capacity: number, name: string) => new Receiver<T>(capacity, name),
      push: (receiver, message) => receiver.#push(message),
      end: (receiver, reason) => receiver.#end(reason),
    };
  }

  private constructor(capacity: number, name: string) {
    this.#capacity = capacity;
    this.#describe = name;
  }

  /** Messages waiting to be received. */
  get length(): number {
    return this.#queue.length;
  }

  /** Whether the channel has ended (every message before the end stays receivable). */
  get ended(): boolean {
    return this.#ended !== undefined;
  }

  /**
   * The next message, waiting for one.
   *
   * @param options A signal to stop waiting.
   * @returns The message.
   * @throws {ChannelClosedError} Once the channel has ended and its messages
   * are all received.
   */
  receive(options: { signal?: AbortSignal } = {}): Promise<T> {
    if (this.#queue.length > 0) {
      if (this.#sizes.length === this.#queue.length) this.#queuedBytes -= this.#sizes.shift()!;
      const message = this.#queue.shift() as T;
      if (this.#queue.length <= this.#capacity && this.#queuedBytes <= CAPACITY_BYTES) {
        for (const resolve of this.#spaceWaiters.splice(0)) resolve();
      }
      return Promise.resolve(message);
    }
    if (this.#ended) return Promise.reject(this.#ended);
    return waitInLine(this.#waiters, options.signal);
  }

  /**
   * Iterates the messages until the channel ends.
   *
   * @returns The messages.
   */
  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      try {
        yield await this.receive();
      } catch (error) {
        if (error instanceof ChannelClosedError && this.#ended === error) return;
        throw error;
      }
    }
  }

  /** Delivers a message, waiting while the receiver holds `capacity` of them. */
  #push(message: T): Promise<void> {
    if (this.#ended) {
      return Promise.reject(
        new ChannelClosedError(`Cannot send on ${this.#describe}: it has ended`),
      );
    }
    const waiter = this.#waiters.shift();
    if (waiter) {
      waiter.resolve(message);
      return Promise.resolve();
    }
    if (this.#queue.length > 0) {
      if (this.#sizes.length === 0) this.#count(this.#queue.peek());
      this.#count(message);
    }
    this.#queue.push(message);
    if (this.#queue.length <= this.#capacity && this.#queuedBytes <= CAPACITY_BYTES) {
      return Promise.resolve();
    }
    return new Promise((resolve) => this.#spaceWaiters.push(resolve));
  }

  #count(message: unknown): void {
    const size = estimateSize(message);
    this.#sizes.push(size);
    this.#queuedBytes += size;
  }

  /** Ends the channel: queued messages stay receivable, then receive() rejects. */
  #end(reason: string): void {
    if (this.#ended) return;
    this.#ended = new ChannelClosedError(`${this.#describe} has ended: ${reason}`);
    for (const waiter of this.#waiters.drain()) waiter.reject(this.#ended);
    for (const resolve of this.#spaceWaiters.splice(0)) resolve();
  }
}

/** What the owner of an mpsc channel keeps: its receiver and its producers. */
class MpscChannel<T> {
  readonly receiver: Receiver<T>;
  readonly maxProducers: number;
  /** Senders open now, here and on other nodes. */
  producers = 0;
  /** Senders sent inside messages and not yet connected or closed. */
  readonly tickets = new Set<string>();
  /** Tickets redeemed before their announcement arrived. */
  #redeemedEarly = new Set<string>();
  #ticketCount = 0;

  #onEnd: () => void;

  constructor(readonly id: string, capacity: number, maxProducers: number, onEnd: () => void) {
    this.receiver = receivers.create<T>(capacity, `channel ${id}`);
    this.maxProducers = maxProducers;
    this.#onEnd = onEnd;
  }

  /** A new ticket: a sender that will connect (or close) later. */
  ticket(): string {
    const ticket = `${this.id}/${++this.#ticketCount}`;
    this.tickets.add(ticket);
    return ticket;
  }

  /**
   * Counts a ticket announced by another node. Its sender may have joined
   * already (over another comm, or home here), in which case it is done.
   */
  announce(ticket: string): void {
    if (!this.#redeemedEarly.delete(ticket)) this.tickets.add(ticket);
  }

  /** Forgets a ticket whose message was never sent. */
  cancel(ticket: string): void {
    this.tickets.delete(ticket);
    this.#maybeEnd();
  }

  /** Adds a producer, redeeming its ticket if it has one; false past maxProducers. */
  join(ticket?: string): boolean {
    if (ticket !== undefined && !this.tickets.delete(ticket)) this.#redeemedEarly.add(ticket);
    if (this.producers + 1 > this.maxProducers) {
      this.#maybeEnd();
      return false;
    }
    this.producers++;
    return true;
  }

  leave(): void {
    this.producers--;
    this.#maybeEnd();
  }

  #maybeEnd(): void {
    if (this.producers === 0 && this.tickets.size === 0) {
      receivers.end(this.receiver, "every sender has closed");
      this.#onEnd();
    }
  }
}

/**
 * The sending end of an mpsc channel. Clone it for another producer, or put
 * it in a message to another node, where it arrives as a working sender to
 * the same receiver. Each clone sends its messages in order. Close every
 * sender: the receiver ends when all have closed.
 *
 * @example
 * ```ts
 * import { Switchboard } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * await using board = await Switchboard.local();
 * const [tx, rx] = board.mpsc<string>();
 * const second = tx.clone();
 * await tx.send("a");
 * await second.send("b");
 * await tx.close();
 * await second.close();
 * const got: string[] = [];
 * for await (const message of rx) got.push(message);
 * assertEquals(got, ["a", "b"]);
 * ```
 */
export class Sender<T> {
  #board: Switchboard;
  #node: number;
  #channel: string;
  #ticket: string | undefined;
  #closed = false;
  /** Sends, ticket notices and the close, in order. */
  #chain: Promise<unknown> = Promise.resolve();
  #comm: Promise<Comm> | undefined;
  #local: MpscChannel<T> | undefined;
  #refused: ChannelClosedError | undefined;

  static {
    senders = {
      create: <T>(board: Switchboard, node: number, channel: string, ticket?: string) =>
        new Sender<T>(board, node, channel, ticket),
      wire: (sender, undo) => sender.#wire(undo),
    };
  }

  private constructor(board: Switchboard, node: number, channel: string, ticket?: string) {
    this.#board = board;
    this.#node = node;
    this.#channel = channel;
    this.#ticket = ticket;
    if (node === board.id) {
      // A sender that comes home in a message joins directly; one refused
      // fails its sends (and a refused clone throws).
      const local = boards.channel<T>(board, channel);
      if (!local) {
        this.#refused = new ChannelClosedError(`Cannot send on channel ${channel}: it has ended`);
      } else if (!local.join(ticket)) {
        this.#refused = new ChannelClosedError(
          `Cannot add a sender to channel ${channel}: it accepts at most ${local.maxProducers} producers`,
        );
      } else {
        this.#local = local;
      }
      if (this.#refused) this.#closed = true;
    }
  }

  /** The node whose receiver this sender feeds. */
  get node(): number {
    return this.#node;
  }

  /** Whether {@linkcode Sender.close} was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Sends a message. It resolves once the message is queued at the
   * receiver (here) or written to its comm (remote).
   *
   * @param message The message.
   * @throws {ChannelClosedError} If this sender is closed, the receiver has
   * ended, or the channel refused this producer.
   */
  send(message: T): Promise<void> {
    if (this.#refused) return Promise.reject(this.#refused);
    if (this.#closed) {
      return Promise.reject(
        new ChannelClosedError(`Cannot send on channel ${this.#channel}: this sender is closed`),
      );
    }
    if (this.#local) return receivers.push(this.#local.receiver, message);
    return this.#enqueue(async () => {
      try {
        await writeWithSenders(await this.#open(), message);
      } catch (error) {
        if (!(error instanceof CommClosedError)) throw error;
        throw new ChannelClosedError(
          `Cannot send on channel ${this.#channel}: the comm to node ${this.#node} is closed`,
          { cause: error },
        );
      }
    });
  }

  /**
   * Another sender to the same receiver, counted as one more producer.
   *
   * @returns The clone.
   * @throws {ChannelClosedError} If this sender is closed or the channel is
   * at `maxProducers` (here; a remote channel refuses on first send).
   */
  clone(): Sender<T> {
    if (this.#closed) {
      throw new ChannelClosedError(`Cannot clone a closed sender of channel ${this.#channel}`);
    }
    if (!this.#local) {
      return senders.create<T>(this.#board, this.#node, this.#channel, this.#remoteTicket());
    }
    const clone = senders.create<T>(this.#board, this.#node, this.#channel);
    if (clone.#refused) throw clone.#refused;
    return clone;
  }

  /**
   * Closes this sender; the receiver ends once every sender has closed.
   * Messages already sent are delivered first.
   */
  close(): Promise<void> {
    if (this.#closed) return this.#chain.then(() => {}, () => {});
    this.#closed = true;
    if (this.#local) {
      this.#local.leave();
      return Promise.resolve();
    }
    return this.#enqueue(async () => {
      const comm = await this.#open();
      await comm.close();
    }).catch(() => {});
  }

  /** Closes the sender, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /** A sender in a message travels as a ticket for a new producer. */
  [TO_WIRE](): unknown {
    return this.#wire();
  }

  /**
   * The wire form: a ticket for a new producer, which `undo` forgets (for a
   * message that was never sent).
   */
  #wire(undo?: (() => void)[]): unknown {
    if (this.#closed) {
      throw new ChannelClosedError(`Cannot send a closed sender of channel ${this.#channel}`);
    }
    const ticket = this.#local ? this.#local.ticket() : this.#remoteTicket();
    undo?.push(() => {
      if (this.#local) this.#local.cancel(ticket);
      else this.#control("cancel", ticket);
    });
    return { [SENDER_KEY]: { node: this.#node, channel: this.#channel, ticket } };
  }

  /** A ticket made here for a remote channel, announced on this sender's comm. */
  #remoteTicket(): string {
    const ticket = `${this.#board.id}:${crypto.randomUUID()}`;
    this.#control("ticket", ticket);
    return ticket;
  }

  /** Tells the receiver's node about a ticket, in order with this sender's messages. */
  #control(kind: "ticket" | "cancel", ticket: string): void {
    this.#enqueue(async () => (await this.#open()).write({ [CONTROL_KEY]: kind, ticket }))
      .catch(() => {});
  }

  #enqueue(step: () => Promise<unknown>): Promise<void> {
    const next = this.#chain.then(step);
    this.#chain = next.catch(() => {});
    return next.then(() => {});
  }

  #open(): Promise<Comm> {
    this.#comm ??= boards.openProducer(this.#board, this.#node, this.#channel, this.#ticket);
    return this.#comm;
  }
}

/**
 * Sends every message to a token's `broadcastRx` on every other node (and
 * this one with `includeSelf`).
 *
 * @example
 * ```ts
 * import { Switchboard } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * await using board = await Switchboard.local();
 * const rx = board.broadcastRx<number>("ticks");
 * const tx = board.broadcastTx<number>("ticks", { includeSelf: true });
 * await tx.send(1);
 * assertEquals(await rx.receive(), 1);
 * await tx.close();
 * ```
 */
export class BroadcastSender<T> {
  #board: Switchboard;
  #token: string;
  #includeSelf: boolean;
  #comms = new Map<number, Promise<Comm>>();
  #closed = false;

  static {
    broadcastSenders = {
      create: <T>(board: Switchboard, token: string, includeSelf: boolean) =>
        new BroadcastSender<T>(board, token, includeSelf),
    };
  }

  private constructor(board: Switchboard, token: string, includeSelf: boolean) {
    this.#board = board;
    this.#token = token;
    this.#includeSelf = includeSelf;
  }

  /**
   * Sends a message to every node.
   *
   * @param message The message.
   * @throws {ChannelClosedError} If this sender is closed.
   */
  async send(message: T): Promise<void> {
    if (this.#closed) {
      throw new ChannelClosedError(`Cannot broadcast on "${this.#token}": this sender is closed`);
    }
    const sends: Promise<void>[] = [];
    for (let node = 0; node < this.#board.size; node++) {
      if (node === this.#board.id) {
        if (this.#includeSelf) {
          sends.push(receivers.push(boards.broadcastInbox<T>(this.#board, this.#token), message));
        }
        continue;
      }
      let comm = this.#comms.get(node);
      if (!comm) {
        comm = boards.openBroadcast(this.#board, node, this.#token);
        this.#comms.set(node, comm);
      }
      sends.push(comm.then((c) => writeWithSenders(c, message)));
    }
    await Promise.all(sends);
  }

  /** Closes the comms to the other nodes. */
  async close(): Promise<void> {
    this.#closed = true;
    await Promise.allSettled([...this.#comms.values()].map(async (comm) => (await comm).close()));
  }

  /** Closes the sender, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/**
 * One per process: routes channels between the nodes of a fixed cluster.
 *
 * Create it with {@linkcode Switchboard.create} (it listens on
 * `nodes[id]`), or with `new Switchboard(options)` and hand it the comms
 * your own listener accepts ({@linkcode Switchboard.handleComm}). Then
 * {@linkcode Switchboard.rendezvous} waits until every node is reachable.
 *
 * @example Two nodes in one process
 * ```ts
 * import { Switchboard } from "@x/comm";
 * import { assertEquals } from "@std/assert";
 *
 * const nodes = ["inproc://board-a", "inproc://board-b"];
 * await using a = await Switchboard.create({ nodes, id: 0 });
 * await using b = await Switchboard.create({ nodes, id: 1 });
 * await Promise.all([a.rendezvous(), b.rendezvous()]);
 *
 * const [tx, rx] = a.mpsc<string>();
 * // Send the sender to node 1 inside a message, on a broadcast channel.
 * const mail = b.broadcastRx<{ reply: unknown }>("mail");
 * const post = a.broadcastTx<{ reply: unknown }>("mail");
 * await post.send({ reply: tx });
 * const { reply } = await mail.receive();
 * await (reply as typeof tx).send("hello from b");
 * assertEquals(await rx.receive(), "hello from b");
 * await (reply as typeof tx).close();
 * await tx.close();
 * await post.close();
 * ```
 */
export class Switchboard implements AsyncDisposable {
  readonly #nodes: readonly string[];
  readonly #id: number;
  readonly #connectOptions: ConnectOptions;
  #listener: Listener | undefined;
  #heard = new Set<number>();
  #heardWaiters: (() => void)[] = [];
  #channels = new Map<string, MpscChannel<unknown>>();
  #channelCount = 0;
  #broadcasts = new Map<string, Receiver<unknown>>();
  #claimed = new Set<string>();
  #comms = new Set<Comm>();
  #closed = false;

  /**
   * A switchboard that does not listen: hand it the comms your listener
   * accepts on `nodes[id]` with {@linkcode Switchboard.handleComm}.
   *
   * @param options The nodes and this node's id.
   * @throws {TypeError} If `nodes` is empty or `id` is not an index of it.
   */
  constructor(options: SwitchboardOptions) {
    const { nodes, id } = options;
    if (!Array.isArray(nodes) || nodes.length === 0 || !nodes.every((n) => typeof n === "string")) {
      throw new TypeError(
        `Invalid nodes ${describe(nodes)}: expected a non-empty array of addresses`,
      );
    }
    if (!Number.isInteger(id) || id < 0 || id >= nodes.length) {
      throw new TypeError(
        `Invalid id ${describe(id)}: expected an index of nodes, from 0 to ${nodes.length - 1}`,
      );
    }
    this.#nodes = [...nodes];
    this.#id = id;
    this.#connectOptions = options.connectOptions ?? {};
    this.#heard.add(id);
  }

  /**
   * Creates a switchboard listening on `nodes[id]`.
   *
   * @param options The nodes, this node's id, and comm options.
   * @returns The switchboard, listening.
   */
  static async create(options: SwitchboardOptions): Promise<Switchboard> {
    const board = new Switchboard(options);
    board.#listener = await listen(
      board.#nodes[board.#id],
      (comm) => board.handleComm(comm),
      options.listenOptions ?? {},
    );
    return board;
  }

  /**
   * A single-node switchboard on a fresh in-process address, for tests and
   * examples.
   *
   * @returns The switchboard.
   */
  static async local(): Promise<Switchboard> {
    return await Switchboard.create({
      nodes: [`inproc://switchboard-${crypto.randomUUID()}`],
      id: 0,
    });
  }

  /** This node's index. */
  get id(): number {
    return this.#id;
  }

  /** How many nodes the cluster has. */
  get size(): number {
    return this.#nodes.length;
  }

  /** Every node's address. */
  get nodes(): readonly string[] {
    return this.#nodes;
  }

  /**
   * Connects to every later node and waits for every earlier one to connect
   * here, so that all are known to be up.
   *
   * @param options How long to wait, and a signal to stop.
   * @throws {RendezvousError} If some nodes were not reached in time; the
   * message names them.
   */
  async rendezvous(options: RendezvousOptions = {}): Promise<void> {
    const timeout = checkDuration("timeout", options.timeout, DEFAULT_RENDEZVOUS_TIMEOUT);
    options.signal?.throwIfAborted();
    const deadline = performance.now() + timeout;
    const reached = new Set<number>();
    const errors = new Map<number, unknown>();
    const greet = async (node: number) => {
      try {
        const comm = await connect(this.#nodes[node], {
          ...this.#connectOptions,
          timeout: Math.max(0, deadline - performance.now()),
          signal: options.signal,
        });
        try {
          await comm.write({ [CONTROL_KEY]: "hello", from: this.#id });
          await comm.read();
          reached.add(node);
        } finally {
          await comm.close();
        }
      } catch (error) {
        errors.set(node, error);
      }
    };
    const later = [];
    for (let node = this.#id + 1; node < this.size; node++) later.push(greet(node));
    const earlier = this.#waitHeard(deadline, options.signal);
    await Promise.all([...later, earlier]);
    options.signal?.throwIfAborted();
    const missing: number[] = [];
    for (let node = 0; node < this.size; node++) {
      if (node < this.#id ? !this.#heard.has(node) : node > this.#id && !reached.has(node)) {
        missing.push(node);
      }
    }
    if (missing.length > 0) {
      const names = missing.map((node) => `${node} (${this.#nodes[node]})`).join(", ");
      const last = errors.get(missing.find((node) => errors.has(node)) ?? -1);
      throw new RendezvousError(
        `Rendezvous of node ${this.#id} failed after ${timeout} ms: ${
          missing.length === 1 ? "node" : "nodes"
        } ${names} not reached${last === undefined ? "" : ` (last error: ${messageOf(last)})`}`,
        missing,
        last === undefined ? undefined : { cause: last },
      );
    }
  }

  /** Waits until every earlier node has greeted this one, the deadline passes, or `signal` aborts. */
  async #waitHeard(deadline: number, signal?: AbortSignal): Promise<void> {
    const { signal: stop, clear } = timeoutSignal(
      Math.max(0, deadline - performance.now()),
      signal,
    );
    try {
      while (!this.#closed && !stop.aborted && this.#earlierMissing()) {
        await new Promise<void>((resolve) => {
          this.#heardWaiters.push(resolve);
          stop.addEventListener("abort", () => resolve(), { once: true });
        });
      }
    } finally {
      clear();
    }
  }

  #earlierMissing(): boolean {
    for (let node = 0; node < this.#id; node++) if (!this.#heard.has(node)) return true;
    return false;
  }

  /**
   * A new mpsc channel whose receiver lives here.
   *
   * @param options `maxProducers` and `capacity`.
   * @returns The first sender and the receiver.
   */
  mpsc<T>(options: MpscOptions = {}): [Sender<T>, Receiver<T>] {
    this.#checkOpen("create a channel");
    const maxProducers = options.maxProducers === undefined || options.maxProducers === Infinity
      ? Infinity
      : checkSize("maxProducers", options.maxProducers, 1);
    const capacity = checkSize("capacity", options.capacity, DEFAULT_CAPACITY);
    const id = `${this.#id}.${++this.#channelCount}`;
    const channel = new MpscChannel<T>(id, capacity, maxProducers, () => this.#channels.delete(id));
    this.#channels.set(id, channel as MpscChannel<unknown>);
    const sender = senders.create<T>(this, this.#id, id);
    return [sender, channel.receiver];
  }

  /**
   * A sender of every message to the `broadcastRx(token)` of every other
   * node (and this one with `includeSelf`).
   *
   * @param token The channel's name, the same on every node.
   * @param options Whether this node receives its own messages.
   * @returns The sender.
   */
  broadcastTx<T>(token: string, options: BroadcastOptions = {}): BroadcastSender<T> {
    this.#checkOpen("broadcast");
    checkToken(token);
    return broadcastSenders.create<T>(this, token, options.includeSelf ?? false);
  }

  /**
   * The receiver of a broadcast channel. Messages that arrived before it was
   * asked for wait in it. It ends when the switchboard closes.
   *
   * @param token The channel's name, the same on every node.
   * @returns The receiver.
   * @throws {TypeError} If this token's receiver was already taken.
   */
  broadcastRx<T>(token: string): Receiver<T> {
    this.#checkOpen("receive a broadcast");
    checkToken(token);
    if (this.#claimed.has(token)) {
      throw new TypeError(`Cannot take the receiver of broadcast "${token}" twice`);
    }
    this.#claimed.add(token);
    return this.#broadcastInbox<T>(token);
  }

  /**
   * Serves a comm accepted on this node's address: a rendezvous greeting, or
   * a channel's producer.
   *
   * @param comm The comm.
   * @returns When the comm is done.
   */
  async handleComm(comm: Comm): Promise<void> {
    this.#comms.add(comm);
    try {
      const header = await comm.read() as Record<string, unknown>;
      const kind = header?.[CONTROL_KEY];
      const from = header?.from;
      if (kind === "hello" && typeof from === "number") {
        this.#heard.add(from);
        for (const wake of this.#heardWaiters.splice(0)) wake();
        await comm.write({ ok: true });
        await comm.read().catch(() => {});
      } else if (kind === "mpsc" && typeof header.channel === "string") {
        await this.#serveProducer(comm, header.channel, header.ticket as string | undefined);
      } else if (kind === "broadcast" && typeof header.token === "string") {
        await comm.write({ ok: true });
        const inbox = this.#broadcastInbox<unknown>(header.token);
        for await (const message of comm) await receivers.push(inbox, this.#revive(message));
      } else {
        await comm.write({ ok: false, error: `Unknown switchboard request ${describe(kind)}` });
      }
    } catch (error) {
      if (!(error instanceof CommClosedError) && !(error instanceof ChannelClosedError)) {
        throw error;
      }
    } finally {
      this.#comms.delete(comm);
      await comm.close().catch(() => {});
    }
  }

  async #serveProducer(comm: Comm, id: string, ticket: string | undefined): Promise<void> {
    const channel = this.#channels.get(id);
    if (!channel || channel.receiver.ended) {
      await comm.write({ ok: false, error: `channel ${id} has ended` });
      return;
    }
    if (!channel.join(ticket)) {
      await comm.write({
        ok: false,
        error: `channel ${id} accepts at most ${channel.maxProducers} producers`,
      });
      return;
    }
    try {
      await comm.write({ ok: true });
      for await (const message of comm) {
        const control = (message as Record<string, unknown>)?.[CONTROL_KEY];
        if (control === "ticket") {
          channel.announce((message as { ticket: string }).ticket);
          continue;
        }
        if (control === "cancel") {
          channel.cancel((message as { ticket: string }).ticket);
          continue;
        }
        await receivers.push(channel.receiver, this.#revive(message));
      }
    } finally {
      channel.leave();
    }
  }

  /** Turns `{"__Sender__": …}` markers back into senders bound here. */
  #revive(message: unknown, depth = 0): unknown {
    if (typeof message !== "object" || message === null || depth > 100) return message;
    if (ArrayBuffer.isView(message)) return message;
    if (Array.isArray(message)) {
      for (let i = 0; i < message.length; i++) message[i] = this.#revive(message[i], depth + 1);
      return message;
    }
    const record = message as Record<string, unknown>;
    const wire = record[SENDER_KEY] as { node?: unknown; channel?: unknown; ticket?: unknown };
    // Only a sender on one of our nodes comes alive; anything else stays data.
    if (
      wire && Number.isInteger(wire.node) && (wire.node as number) >= 0 &&
      (wire.node as number) < this.#nodes.length && typeof wire.channel === "string" &&
      typeof wire.ticket === "string"
    ) {
      return senders.create(this, wire.node as number, wire.channel, wire.ticket);
    }
    for (const key in record) record[key] = this.#revive(record[key], depth + 1);
    return record;
  }

  /** Closes the listener, the comms and every receiver. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const wake of this.#heardWaiters.splice(0)) wake();
    await this.#listener?.close();
    await Promise.allSettled([...this.#comms].map((comm) => comm.close()));
    for (const channel of this.#channels.values()) {
      receivers.end(channel.receiver, "the switchboard closed");
    }
    for (const inbox of this.#broadcasts.values()) receivers.end(inbox, "the switchboard closed");
  }

  /** Closes the switchboard, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  static {
    boards = {
      channel: (board, id) => board.#channel(id),
      broadcastInbox: (board, token) => board.#broadcastInbox(token),
      openProducer: (board, node, channel, ticket) => board.#openProducer(node, channel, ticket),
      openBroadcast: (board, node, token) => board.#openBroadcast(node, token),
    };
  }

  #channel<T>(id: string): MpscChannel<T> | undefined {
    return this.#channels.get(id) as MpscChannel<T> | undefined;
  }

  #broadcastInbox<T>(token: string): Receiver<T> {
    let inbox = this.#broadcasts.get(token);
    if (!inbox) {
      inbox = receivers.create<unknown>(Infinity, `broadcast "${token}"`);
      this.#broadcasts.set(token, inbox);
    }
    return inbox as Receiver<T>;
  }

  /** Opens a producer's comm to a channel's node. */
  async #openProducer(node: number, channel: string, ticket?: string): Promise<Comm> {
    return await this.#open(
      node,
      { [CONTROL_KEY]: "mpsc", channel, ticket, from: this.#id },
      `channel ${channel}`,
    );
  }

  /** Opens a broadcast comm to a node. */
  async #openBroadcast(node: number, token: string): Promise<Comm> {
    return await this.#open(
      node,
      { [CONTROL_KEY]: "broadcast", token, from: this.#id },
      `broadcast "${token}"`,
    );
  }

  async #open(node: number, header: Record<string, unknown>, what: string): Promise<Comm> {
    this.#checkOpen(`open ${what}`);
    const comm = await connect(this.#nodes[node], this.#connectOptions);
    try {
      await comm.write(header);
      const reply = await comm.read() as { ok?: unknown; error?: unknown };
      if (!reply?.ok) {
        const error = reply?.error;
        throw new ChannelClosedError(
          `Cannot use ${what} on node ${node}: ${
            typeof error === "string" ? error : `it answered ${describe(reply)}`
          }`,
        );
      }
    } catch (error) {
      await comm.close().catch(() => {});
      throw error;
    }
    this.#comms.add(comm);
    return comm;
  }

  #checkOpen(what: string): void {
    if (this.#closed) throw new ChannelClosedError(`Cannot ${what}: the switchboard is closed`);
  }
}

/**
 * Writes a message whose senders travel as tickets, over any transport
 * (inproc passes messages by reference, so the codec's hook alone would
 * hand the other node the very same sender). If the write fails, the
 * tickets are forgotten, so no receiver waits for a sender that never left.
 */
async function writeWithSenders(comm: Comm, message: unknown): Promise<void> {
  const undo: (() => void)[] = [];
  let wire: unknown;
  try {
    wire = sendersToWire(message, undo, 0);
    await comm.write(wire);
  } catch (error) {
    for (const forget of undo) forget();
    throw error;
  }
}

/** The message with each Sender in its wire form; unchanged parts are shared, not copied. */
function sendersToWire(value: unknown, undo: (() => void)[], depth: number): unknown {
  if (typeof value !== "object" || value === null || depth > 100) return value;
  if (value instanceof Sender) return senders.wire(value, undo);
  if (ArrayBuffer.isView(value) || value instanceof Map || value instanceof Set) return value;
  if (Array.isArray(value)) {
    let copy: unknown[] | undefined;
    for (let i = 0; i < value.length; i++) {
      const item = sendersToWire(value[i], undo, depth + 1);
      if (item !== value[i]) (copy ??= [...value])[i] = item;
    }
    return copy ?? value;
  }
  if (Object.getPrototypeOf(value) !== Object.prototype) return value;
  let copy: Record<string, unknown> | undefined;
  for (const [key, item] of Object.entries(value)) {
    const wire = sendersToWire(item, undo, depth + 1);
    if (wire !== item) (copy ??= { ...value as Record<string, unknown> })[key] = wire;
  }
  return copy ?? value;
}

function checkToken(token: unknown): void {
  if (typeof token !== "string" || token === "") {
    throw new TypeError(`Invalid broadcast token ${describe(token)}: expected a non-empty string`);
  }
}
