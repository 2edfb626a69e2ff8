//! wasm_plugins.zig: guest ABI 1 of wasm-plugins for Zig plugins (ABI.md is normative).
//!
//! A plugin's root file re-exports the allocator and writes each plugin function as
//! `export fn name(ptr: [*]const u8, len: u32) u64`, returning `wp.output(bytes)` or
//! `wp.fail(message)`:
//!
//!     const wp = @import("wasm_plugins.zig");
//!     export fn wp_alloc(size: u32) ?[*]u8 { return wp.alloc(size); }
//!     export fn wp_free(ptr: [*]u8, size: u32) void { wp.free(ptr, size); }
//!     export fn shout(ptr: [*]const u8, len: u32) u64 { ... return wp.output(text); }
//!
//! Build with `python -m ziglang build-exe root.zig -target wasm32-freestanding -fno-entry
//! -rdynamic -O ReleaseSmall` (what `wasm-plugins build` runs).

const std = @import("std");

extern "wasm_plugins" fn @"error"(ptr: [*]const u8, len: u32) void;
extern "wasm_plugins" fn log(level: i32, ptr: [*]const u8, len: u32) void;

pub const Level = enum(i32) { trace = 0, debug = 1, info = 2, warning = 3, @"error" = 4 };

/// The allocator behind wp_alloc and wp_free, also for the plugin's own use.
pub const allocator = std.heap.wasm_allocator;

pub fn alloc(size: u32) ?[*]u8 {
    const block = allocator.alloc(u8, if (size == 0) 1 else size) catch return null;
    return block.ptr;
}

pub fn free(ptr: [*]u8, size: u32) void {
    allocator.free(ptr[0..(if (size == 0) 1 else size)]);
}

/// The input of a call, as a slice (owned by the host; valid during the call).
pub fn input(ptr: [*]const u8, len: u32) []const u8 {
    return ptr[0..len];
}

var output_buffer: []u8 = &[_]u8{};

/// Keep a copy of `bytes` as the call's output (valid until the next call) and return the
/// packed result.
pub fn output(bytes: []const u8) u64 {
    if (output_buffer.len < bytes.len) {
        if (output_buffer.len > 0) allocator.free(output_buffer);
        output_buffer = allocator.alloc(u8, bytes.len) catch {
            output_buffer = &[_]u8{};
            return fail("out of memory while writing the output");
        };
    }
    @memcpy(output_buffer[0..bytes.len], bytes);
    return result(output_buffer.ptr, @intCast(bytes.len));
}

pub fn result(ptr: [*]const u8, len: u32) u64 {
    return (@as(u64, @intFromPtr(ptr)) << 32) | len;
}

/// Refuse the input: the host raises a runtime error (trap "guest_error") with this message.
pub fn fail(message: []const u8) u64 {
    var buffer: [1024]u8 = undefined;
    var at: usize = 0;
    const head = "{\"message\":\"";
    @memcpy(buffer[0..head.len], head);
    at = head.len;
    for (message) |c| {
        if (at + 4 > buffer.len) break;
        if (c == '"' or c == '\\') {
            buffer[at] = '\\';
            at += 1;
        }
        if (c >= 0x20) {
            buffer[at] = c;
            at += 1;
        }
    }
    buffer[at] = '"';
    buffer[at + 1] = '}';
    @"error"(&buffer, @intCast(at + 2));
    return 0;
}

/// Log a message (needs the "log" capability).
pub fn logMessage(level: Level, message: []const u8) void {
    log(@intFromEnum(level), message.ptr, @intCast(message.len));
}

/// The string member `key` of a top-level JSON object, without unescaping (null when absent or
/// not a string without escapes); enough for simple inputs such as {"name": "Ada"}.
pub fn jsonString(json: []const u8, key: []const u8) ?[]const u8 {
    var i: usize = 0;
    while (i + key.len + 2 < json.len) : (i += 1) {
        if (json[i] != '"' or !std.mem.eql(u8, json[i + 1 .. i + 1 + key.len], key) or
            json[i + 1 + key.len] != '"') continue;
        var j = i + key.len + 2;
        while (j < json.len and (json[j] == ' ' or json[j] == ':')) : (j += 1) {}
        if (j >= json.len or json[j] != '"') return null;
        const start = j + 1;
        var end = start;
        while (end < json.len and json[end] != '"') : (end += 1) {
            if (json[end] == '\\') return null;
        }
        if (end >= json.len) return null;
        return json[start..end];
    }
    return null;
}

/// Append `text` to `buffer` at `at` as a JSON string; the new end, or null when it does not fit.
pub fn putJsonString(buffer: []u8, at: usize, text: []const u8) ?usize {
    var n = at;
    if (n >= buffer.len) return null;
    buffer[n] = '"';
    n += 1;
    for (text) |c| {
        if (n + 7 > buffer.len) return null;
        if (c == '"' or c == '\\') {
            buffer[n] = '\\';
            n += 1;
            buffer[n] = c;
            n += 1;
        } else if (c < 0x20) {
            const hex = "0123456789abcdef";
            @memcpy(buffer[n .. n + 4], "\\u00");
            buffer[n + 4] = hex[c >> 4];
            buffer[n + 5] = hex[c & 15];
            n += 6;
        } else {
            buffer[n] = c;
            n += 1;
        }
    }
    if (n >= buffer.len) return null;
    buffer[n] = '"';
    return n + 1;
}
