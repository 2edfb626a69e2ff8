/* The {{name}} plugin: greet({"name": str}) -> {"greeting": str}. */
#include "wasm_plugins.h"
#include "wp_kit.h"
#include "wp_json.h"

WP_EXPORT(greet) uint64_t greet(const uint8_t *input, uint32_t len) {
    char name[256];
    uint32_t name_len = 0;
    int found = wp_json_string(input, len, "name", name, sizeof name, &name_len);
    if (found != WP_JSON_FOUND || name_len == 0) return wp_fail("a non-empty name is required");
    wp_buf *out = wp_output_begin();
    wp_buf_text(out, "{\"greeting\":");
    char greeting[300] = "Hello, ";
    uint32_t at = 7;
    for (uint32_t i = 0; i < name_len; i++) greeting[at++] = name[i];
    greeting[at++] = '!';
    wp_json_put_string(out, greeting, at);
    wp_buf_text(out, "}");
    return wp_output_result();
}
