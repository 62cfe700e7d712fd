import * as udp from "./_udp.ts";
for (let i = 0; i < 2; i++) {
  console.log("raw", await udp.raw());
  console.log("deno", await udp.ours("deno"));
  console.log("node", await udp.ours("node"));
  console.log("dgram", await udp.nodeDgram());
}
