/**
 * UDP multicast: two sockets join a group and each gets every message one
 * sender sends to the group, all on the loopback interface.
 *
 * ```sh
 * deno run --allow-net examples/udp_multicast.ts                 # group 239.255.42.99
 * deno run --allow-net examples/udp_multicast.ts 239.255.0.7 5   # a group, how many messages
 * ```
 *
 * It prints
 *
 * ```text
 * 2 members of 239.255.42.99 on port 41234, joined on 127.0.0.1
 * member 1 got {"seq":1,"text":"to the group"} from udp://127.0.0.1:50712
 * member 2 got {"seq":1,"text":"to the group"} from udp://127.0.0.1:50712
 * …
 * Sent 3 message(s) to udp://239.255.42.99:41234; member 1 got 3, member 2 got 3
 * ```
 *
 * UDP may lose datagrams; each member waits at most a second for each one.
 * To span machines, join on a real interface instead of 127.0.0.1.
 *
 * @module
 */

import { bind, type DatagramSocket } from "@x/comm/datagram";

const group = Deno.args[0] ?? "239.255.42.99";
const count = Number(Deno.args[1] ?? 3);
if (!Number.isInteger(count) || count < 1) {
  throw new TypeError("The count must be a positive whole number");
}
const INTERFACE = "127.0.0.1";
const WAIT_MS = 1_000;

// Members bind the group address itself and join it. The first takes a free
// port; the second shares it, which `reuseAddress` allows.
await using first = await bind(`udp://${group}:0`, { reuseAddress: true });
const port = Number(first.address.split(":").at(-1));
await using second = await bind(`udp://${group}:${port}`, { reuseAddress: true });
const members: DatagramSocket[] = [first, second];
for (const member of members) await member.joinMulticast(group, { interface: INTERFACE });
console.log(`${members.length} members of ${group} on port ${port}, joined on ${INTERFACE}`);

// The sender needs no membership: it only says which interface to send by.
await using sender = await bind(`udp://${INTERFACE}:0`, { multicastInterface: INTERFACE });
const to = `udp://${group}:${port}`;
const received = members.map(() => 0);
for (let seq = 1; seq <= count; seq++) {
  await sender.sendMessage({ seq, text: "to the group" }, to);
  await Promise.all(members.map(async (member, i) => {
    try {
      const { message, from } = await member.receiveMessage({
        signal: AbortSignal.timeout(WAIT_MS),
      });
      console.log(`member ${i + 1} got ${JSON.stringify(message)} from ${from}`);
      received[i]++;
    } catch (error) {
      if (!(error instanceof DOMException && error.name === "TimeoutError")) throw error;
      console.log(`member ${i + 1}: message ${seq} did not arrive within ${WAIT_MS} ms`);
    }
  }));
}
console.log(
  `Sent ${count} message(s) to ${to}; ` +
    received.map((n, i) => `member ${i + 1} got ${n}`).join(", "),
);
