// How much the reliability tests do: 1 in the default run, more under
// `deno task soak` (COMM_SOAK=5 there).

/** The factor the reliability tests scale their counts and sizes by: at least 1. */
export const SOAK: number = Math.max(1, Number(Deno.env.get("COMM_SOAK") ?? "1") || 1);

/** `count` times the soak factor, rounded. */
export function soaked(count: number): number {
  return Math.round(count * SOAK);
}
