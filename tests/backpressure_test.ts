// Backpressure holds memory: a writer faster than its reader is slowed down
// rather than queueing without bound. Each case sends 2 GiB in 1 MiB
// messages, fresh buffers every one, through a reader that takes them at a
// tenth of the speed it measured first, and the process's resident memory
// must stay under RSS_BOUND_MIB. The cases run in processes of their own
// (tests/testdata/memory_probe.ts), side by side, so that nothing else is in
// their memory.

import { assert, assertEquals } from "@std/assert";
import { soaked } from "./_soak.ts";

/** The bound: resident memory of the whole process, Deno's own ~50 MiB included. */
const RSS_BOUND_MIB = 256;
const TOTAL_MIB = soaked(2048);
const PROBE = new URL("./testdata/memory_probe.ts", import.meta.url);

interface ProbeResult {
  scenario: string;
  sentMiB: number;
  receivedMiB: number;
  corrupt: number;
  fastMiBps: number;
  slowSeconds: number;
  baselineMiB: number;
  peakMiB: number;
}

async function probe(scenario: string): Promise<ProbeResult> {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", PROBE.pathname, scenario, String(TOTAL_MIB)],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(output.stdout);
  const stderr = new TextDecoder().decode(output.stderr);
  assert(output.success, `the ${scenario} probe failed:\n${stdout}\n${stderr}`);
  return JSON.parse(stdout.trim().split("\n").at(-1)!);
}

Deno.test(`A writer faster than its reader keeps the process under ${RSS_BOUND_MIB} MiB resident sending ${TOTAL_MIB} MiB over inproc, tcp, BatchedSend and a switchboard channel`, async () => {
  const scenarios = ["inproc", "tcp", "batched", "switchboard"];
  const results = await Promise.all(scenarios.map(probe));
  for (const result of results) {
    console.log(
      `${result.scenario}: ${result.receivedMiB} MiB received, reader at a tenth of ${result.fastMiBps} MiB/s for ${result.slowSeconds} s, resident memory ${result.baselineMiB} MiB at the start, ${result.peakMiB} MiB at most`,
    );
  }
  for (const result of results) {
    assertEquals(
      [result.sentMiB, result.receivedMiB, result.corrupt],
      [TOTAL_MIB, TOTAL_MIB, 0],
      `${result.scenario}: lost or corrupt messages`,
    );
    assert(
      result.peakMiB <= RSS_BOUND_MIB,
      `${result.scenario}: resident memory reached ${result.peakMiB} MiB, over ${RSS_BOUND_MIB} MiB`,
    );
  }
});
