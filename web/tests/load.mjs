// SPDX-License-Identifier: MIT
// Loads a module of web/ by its file name. The page's modules are plain .js files (the proxy serves
// only those), which Node before 20.19 would read as CommonJS; a data: URL makes them ES modules on
// any Node since 12. Only self-contained modules (no imports of their own) can be loaded this way.
import { readFile } from "node:fs/promises";

export async function load(name) {
  const source = await readFile(new URL("../" + name, import.meta.url), "utf8");
  return import("data:text/javascript;charset=utf-8," + encodeURIComponent(source));
}

/** The best of `runs` timings of fn() repeated `reps` times, in ms per call: noise only ever adds time. */
export function bestTime(fn, runs = 5, reps = 1) {
  let best = Infinity;
  for (let r = 0; r < runs; r++) {
    const started = process.hrtime.bigint();
    for (let k = 0; k < reps; k++) fn();
    const ms = Number(process.hrtime.bigint() - started) / 1e6 / reps;
    if (ms < best) best = ms;
  }
  return best;
}

/**
 * Time fn(build(n)) and fn(build(4n)); the ratio is ~4 for linear work and ~16 for quadratic.
 * Small inputs are repeated until a run lasts ~10 ms, so timer resolution and one garbage
 * collection cannot swing the ratio.
 */
export function sweep(build, fn, n, { attempts = 3, limit = 6 } = {}) {
  const a = build(n), b = build(4 * n);
  const once = bestTime(() => fn(a), 2);  // also warms up the JIT on the input's shape
  const reps = Math.max(1, Math.min(200, Math.ceil(10 / Math.max(once, 0.01))));
  fn(b);
  let best = null;
  // A garbage collection landing in one run can make linear work look like x7; quadratic work
  // is x16 every time. So measure again (up to `attempts` times) while the ratio looks high.
  for (let attempt = 0; attempt < attempts; attempt++) {
    const small = bestTime(() => fn(a), 3, reps);
    const large = bestTime(() => fn(b), 3, Math.max(1, Math.ceil(reps / 4)));
    const result = { small, large, ratio: large / small };
    if (best === null || result.ratio < best.ratio) best = result;
    if (best.ratio < limit) break;
  }
  return best;
}
