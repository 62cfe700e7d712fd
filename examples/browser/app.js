// The page's side: connect to the server that served the page, send a
// message, show the reply. Once that is done, it checks a few more kinds of
// message (a binary sent out of band, a burst in order) and puts a summary
// in `globalThis.result`, which tests/browser_test.ts reads.

import { connect } from "/comm.js";

const status = document.getElementById("status");
const shown = document.getElementById("reply");
const form = document.getElementById("form");
const text = document.getElementById("text");
const BURST = 1000;

function show(state, message) {
  document.body.dataset.state = state;
  status.textContent = message;
}

async function main() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const comm = await connect(`${scheme}://${location.host}/comm`, { timeout: 10_000 });
  show(
    "connected",
    `Connected to ${comm.peerAddress} (the server sees this page as ${comm.localAddress})`,
  );

  const started = performance.now();
  await comm.write({ text: text.value, sentAt: new Date() });
  const first = await comm.read();
  const roundTripMs = performance.now() - started;
  shown.textContent = JSON.stringify(first, null, 2);

  // A 1 MiB binary travels as a frame of its own, both ways.
  const big = new Uint8Array(1024 * 1024);
  for (let i = 0; i < big.length; i++) big[i] = (i * 31 + 7) & 0xff;
  await comm.write({ big });
  const bigReply = await comm.read();
  const back = bigReply.reply.big;
  const bigIntact = back instanceof Uint8Array && back.length === big.length &&
    back.every((byte, i) => byte === big[i]);

  // A burst written without waiting comes back in order.
  const writes = [];
  for (let i = 0; i < BURST; i++) writes.push(comm.write({ i }));
  let inOrder = true;
  for (let i = 0; i < BURST; i++) {
    const reply = await comm.read();
    if (reply.reply.i !== i) inOrder = false;
  }
  await Promise.all(writes);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    await comm.write({ text: text.value, sentAt: new Date() });
    shown.textContent = JSON.stringify(await comm.read(), null, 2);
  });

  globalThis.result = {
    first,
    roundTripMs,
    big: { sent: big.length, binaryBytes: bigReply.binaryBytes, intact: bigIntact },
    burst: { messages: BURST, inOrder },
    localAddress: comm.localAddress,
    peerAddress: comm.peerAddress,
  };
  show(
    "done",
    `Connected to ${comm.peerAddress}: the reply came back in ${roundTripMs.toFixed(1)} ms`,
  );
}

main().catch((error) => {
  globalThis.result = { error: `${error.name}: ${error.message}` };
  show("error", `${error.name}: ${error.message}`);
});
