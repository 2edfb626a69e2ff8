//! The {{name}} plugin: greet({"name": str}) -> {"greeting": str}.
const wp = @import("wasm_plugins.zig");

export fn wp_alloc(size: u32) ?[*]u8 {
    return wp.alloc(size);
}

export fn wp_free(ptr: [*]u8, size: u32) void {
    wp.free(ptr, size);
}

export fn greet(ptr: [*]const u8, len: u32) u64 {
    const name = wp.jsonString(wp.input(ptr, len), "name") orelse
        return wp.fail("a non-empty name is required");
    if (name.len == 0 or name.len > 256) return wp.fail("a non-empty name is required");
    var greeting: [300]u8 = undefined;
    const hello = "Hello, ";
    @memcpy(greeting[0..hello.len], hello);
    @memcpy(greeting[hello.len .. hello.len + name.len], name);
    greeting[hello.len + name.len] = '!';
    var buffer: [2048]u8 = undefined;
    const head = "{\"greeting\":";
    @memcpy(buffer[0..head.len], head);
    const end = wp.putJsonString(&buffer, head.len, greeting[0 .. hello.len + name.len + 1]) orelse
        return wp.fail("the greeting is too long");
    buffer[end] = '}';
    return wp.output(buffer[0 .. end + 1]);
}
