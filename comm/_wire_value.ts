// Objects that travel as something else: the codec encodes what
// `value[TO_WIRE]()` returns in their place. A Switchboard's Sender uses it
// to travel inside messages. Not part of the public API.

/** The method an object defines to be encoded as another value. */
export const TO_WIRE: unique symbol = Symbol("@x/comm.toWire");

/** An object with a wire form. */
export interface WireValue {
  [TO_WIRE](): unknown;
}
