// wasm-plugins.ts: guest ABI 1 of wasm-plugins for AssemblyScript plugins (ABI.md is normative).
//
// The plugin's entry file re-exports the allocator and writes each plugin function as
// `export function name(ptr: usize, len: u32): u64`:
//
//     import { input, output, fail } from "./wasm-plugins";
//     export { wp_alloc, wp_free } from "./wasm-plugins";
//     export function shout(ptr: usize, len: u32): u64 {
//       return output(input(ptr, len).toUpperCase());
//     }
//
// Build (what `wasm-plugins build` runs):
// `asc assembly/index.ts --outFile plugin.wasm --runtime incremental --use abort= -O3`. `--use abort=` removes the `env.abort` import that
// AssemblyScript adds by default (a failed assertion then traps, which the host reports as a
// runtime error).

@external("wasm_plugins", "error")
declare function wp_error(ptr: usize, len: u32): void;

@external("wasm_plugins", "log")
declare function wp_log(level: i32, ptr: usize, len: u32): void;

// The host's buffers are pinned ArrayBuffers, so the collector never moves or frees them.
export function wp_alloc(size: u32): usize {
  const buffer = __new(size, idof<ArrayBuffer>());
  __pin(buffer);
  return buffer;
}

export function wp_free(ptr: usize, size: u32): void {
  __unpin(ptr);
}

// The output stays alive (referenced here) until the next call, as ABI.md asks.
let lastOutput: ArrayBuffer = new ArrayBuffer(0);

/** The input of a call, decoded from UTF-8. */
export function input(ptr: usize, len: u32): string {
  return String.UTF8.decodeUnsafe(ptr, len);
}

/** Return `text` (UTF-8 encoded) as the call's output. */
export function output(text: string): u64 {
  lastOutput = String.UTF8.encode(text);
  return (<u64>changetype<usize>(lastOutput) << 32) | <u64>lastOutput.byteLength;
}

/** Refuse the input: the host raises a runtime error with this message. */
export function fail(message: string): u64 {
  const payload = String.UTF8.encode('{"message":' + jsonQuote(message) + "}");
  wp_error(changetype<usize>(payload), <u32>payload.byteLength);
  return 0;
}

/** Log a message at a level (0 trace ... 4 error); needs the "log" capability. */
export function log(level: i32, message: string): void {
  const payload = String.UTF8.encode(message);
  wp_log(level, changetype<usize>(payload), <u32>payload.byteLength);
}

/** `text` as a JSON string, quotes included. */
export function jsonQuote(text: string): string {
  let quoted = '"';
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c == 0x22 || c == 0x5c) quoted += "\\" + String.fromCharCode(c);
    else if (c < 0x20) quoted += "\\u00" + (c < 16 ? "0" : "") + c.toString(16);
    else quoted += String.fromCharCode(c);
  }
  return quoted + '"';
}

/** The string member `key` of a top-level JSON object (simple escapes undone), or null. */
export function jsonString(json: string, key: string): string | null {
  const marker = '"' + key + '"';
  let at = json.indexOf(marker);
  if (at < 0) return null;
  at += marker.length;
  while (at < json.length && (json.charAt(at) == " " || json.charAt(at) == ":")) at++;
  if (at >= json.length || json.charAt(at) != '"') return null;
  let value = "";
  for (let i = at + 1; i < json.length; i++) {
    const c = json.charAt(i);
    if (c == '"') return value;
    if (c == "\\" && i + 1 < json.length) {
      i++;
      const next = json.charAt(i);
      value += next == "n" ? "\n" : next == "t" ? "\t" : next;
    } else {
      value += c;
    }
  }
  return null;
}
