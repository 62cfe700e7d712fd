// How bind() opens a DatagramSocket, whose constructor is private; socket.ts
// fills it in. Not part of the public API.

import type { DatagramSocket } from "./socket.ts";
import type { SocketSettings, Transport } from "./_transport.ts";

export const socketControl: {
  /** Wraps a bound transport in a socket. */
  open: (transport: Transport, family: 4 | 6, settings: SocketSettings) => DatagramSocket;
} = {
  open: () => {
    throw new Error("socket.ts was not loaded");
  },
};
