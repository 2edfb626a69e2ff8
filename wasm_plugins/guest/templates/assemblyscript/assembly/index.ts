// The {{name}} plugin: greet({"name": str}) -> {"greeting": str}.
import { input, output, fail, jsonQuote, jsonString } from "./wasm-plugins";
export { wp_alloc, wp_free } from "./wasm-plugins";

export function greet(ptr: usize, len: u32): u64 {
  const name = jsonString(input(ptr, len), "name");
  if (name === null || name.length == 0) return fail("a non-empty name is required");
  return output('{"greeting":' + jsonQuote("Hello, " + name! + "!") + "}");
}
