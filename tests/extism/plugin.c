/* An Extism plugin in C, written as with Extism's C PDK: the kernel's imports declared by hand,
 * no libc. Exports count (input, output), count_vowels (also vars and logs), greet (config)
 * and reject (error_set). Built by the tests with `python -m ziglang cc`. */
#include <stdint.h>

#define IMPORT(name) __attribute__((import_module("extism:host/env"), import_name(#name)))
#define EXPORT(name) __attribute__((export_name(#name)))

IMPORT(input_length) uint64_t input_length(void);
IMPORT(input_load_u8) uint8_t input_load_u8(uint64_t offset);
IMPORT(input_load_u64) uint64_t input_load_u64(uint64_t offset);
IMPORT(alloc) uint64_t alloc(uint64_t length);
IMPORT(length) uint64_t length(uint64_t offset);
IMPORT(load_u8) uint8_t load_u8(uint64_t offset);
IMPORT(store_u8) void store_u8(uint64_t offset, uint8_t value);
IMPORT(load_u64) uint64_t load_u64(uint64_t offset);
IMPORT(store_u64) void store_u64(uint64_t offset, uint64_t value);
IMPORT(output_set) void output_set(uint64_t offset, uint64_t length);
IMPORT(error_set) void error_set(uint64_t offset);
IMPORT(config_get) uint64_t config_get(uint64_t offset);
IMPORT(var_get) uint64_t var_get(uint64_t offset);
IMPORT(var_set) void var_set(uint64_t offset, uint64_t value);
IMPORT(log_info) void log_info(uint64_t offset);

static uint64_t store_bytes(const char *data, uint64_t n) {
    uint64_t offset = alloc(n);
    uint64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t word = 0;
        for (int b = 7; b >= 0; b--) word = (word << 8) | (uint8_t)data[i + b];
        store_u64(offset + i, word);
    }
    for (; i < n; i++) store_u8(offset + i, (uint8_t)data[i]);
    return offset;
}

static uint64_t string_length(const char *text) {
    uint64_t n = 0;
    while (text[n]) n++;
    return n;
}

static uint64_t block(const char *text) { return store_bytes(text, string_length(text)); }

static uint64_t is_vowel(uint8_t c) {
    c |= 0x20;
    return c == 'a' || c == 'e' || c == 'i' || c == 'o' || c == 'u';
}

static uint64_t vowels_in_input(void) {
    uint64_t n = input_length(), count = 0, i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t word = input_load_u64(i);
        for (int b = 0; b < 8; b++) count += is_vowel((uint8_t)(word >> (8 * b)));
    }
    for (; i < n; i++) count += is_vowel(input_load_u8(i));
    return count;
}

EXPORT(count) int32_t count(void) {
    uint64_t count = vowels_in_input();
    char text[40] = "{\"count\": ";
    uint64_t at = 10;
    char digits[24];
    int d = 0;
    do { digits[d++] = (char)('0' + count % 10); count /= 10; } while (count);
    while (d) text[at++] = digits[--d];
    text[at++] = '}';
    output_set(store_bytes(text, at), at);
    return 0;
}

EXPORT(count_vowels) int32_t count_vowels(void) {
    uint64_t count = vowels_in_input();

    uint64_t key = block("total");
    uint64_t previous = var_get(key);
    uint64_t total = count + (previous ? load_u64(previous) : 0);
    uint64_t saved = alloc(8);
    store_u64(saved, total);
    var_set(key, saved);

    char text[80] = "{\"count\": ";
    uint64_t at = 10;
    char digits[24];
    int d = 0;
    do { digits[d++] = (char)('0' + count % 10); count /= 10; } while (count);
    while (d) text[at++] = digits[--d];
    const char *middle = ", \"total\": ";
    for (const char *p = middle; *p; p++) text[at++] = *p;
    do { digits[d++] = (char)('0' + total % 10); total /= 10; } while (total);
    while (d) text[at++] = digits[--d];
    text[at++] = '}';
    log_info(block("counted"));
    output_set(store_bytes(text, at), at);
    return 0;
}

EXPORT(greet) int32_t greet(void) {
    uint64_t name = config_get(block("name"));
    if (!name) {
        error_set(block("no name configured"));
        return 1;
    }
    char text[128] = "Hello, ";
    uint64_t n = length(name), at = 7;
    for (uint64_t i = 0; i < n && at < sizeof text - 1; i++) text[at++] = (char)load_u8(name + i);
    text[at++] = '!';
    output_set(store_bytes(text, at), at);
    return 0;
}

EXPORT(reject) int32_t reject(void) {
    error_set(block("rejected by the plugin"));
    return 1;
}
