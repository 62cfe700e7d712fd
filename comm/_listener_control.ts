// A way for the Server to stop a listener accepting without closing the comms
// it has already handed out; core.ts fills it in. Not part of the public API.

import type { Listener } from "./types.ts";

export const listenerControl: {
  /**
   * Stops `listener` accepting and closes the comms it has not handed out
   * yet; the others stay open until `close()`.
   */
  stopAccepting: (listener: Listener) => Promise<void>;
} = { stopAccepting: (listener) => listener.close() };
