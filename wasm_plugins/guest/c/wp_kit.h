/*
 * wp_kit.h: what almost every C plugin for wasm-plugins needs besides the ABI declarations:
 * an allocator (which also serves the host through wp_alloc / wp_free) and a growable byte
 * buffer for the output. Header-only, freestanding (no libc), for a plugin of one C file:
 *
 *     #include "wasm_plugins.h"
 *     #include "wp_kit.h"       // defines and exports wp_alloc and wp_free
 *     #include "wp_json.h"      // optional: read the input's JSON, write the output's
 *
 * Memory: power-of-two size classes from 16 bytes, each with a free list. wp_free receives the
 * size, so a block has no header; memory is taken from the heap's end and grown a page at a time.
 *
 * Output: wp_output is one buffer reused (and grown) across calls, which is what ABI.md asks of
 * an output: unchanged until the guest's next call, and never leaked.
 */
#ifndef WP_KIT_H
#define WP_KIT_H

#include <stddef.h>
#include <stdint.h>

#include "wasm_plugins.h"

#define WP_CLASSES 28

extern unsigned char __heap_base;
static uint32_t wp_heap_top;
static void *wp_free_lists[WP_CLASSES];

static inline uint32_t wp_class_of(uint32_t size) {
    uint32_t klass = 0;
    while ((16u << klass) < size) klass++;
    return klass;
}

WP_EXPORT(wp_alloc) void *wp_alloc(uint32_t size) {
    if (size == 0) size = 1;
    if (size > 0x40000000u) return 0;
    uint32_t klass = wp_class_of(size);
    void *block = wp_free_lists[klass];
    if (block) {
        wp_free_lists[klass] = *(void **)block;
        return block;
    }
    if (wp_heap_top == 0) wp_heap_top = ((uint32_t)(uintptr_t)&__heap_base + 15u) & ~15u;
    uint32_t bytes = 16u << klass;
    uint64_t end = (uint64_t)wp_heap_top + bytes;
    uint64_t have = (uint64_t)__builtin_wasm_memory_size(0) * 65536u;
    if (end > have) {
        uint64_t pages = (end - have + 65535u) / 65536u;
        if (__builtin_wasm_memory_grow(0, (size_t)pages) == (size_t)-1) return 0;
    }
    block = (void *)(uintptr_t)wp_heap_top;
    wp_heap_top = (uint32_t)end;
    return block;
}

WP_EXPORT(wp_free) void wp_free(void *ptr, uint32_t size) {
    if (!ptr) return;
    uint32_t klass = wp_class_of(size ? size : 1);
    *(void **)ptr = wp_free_lists[klass];
    wp_free_lists[klass] = ptr;
}

/* A growable byte buffer; `failed` is set (and the content frozen) when memory runs out. */
typedef struct {
    uint8_t *data;
    uint32_t len;
    uint32_t cap;
    int failed;
} wp_buf;

static inline int wp_buf_reserve(wp_buf *buf, uint32_t extra) {
    if (buf->failed) return 0;
    uint64_t need = (uint64_t)buf->len + extra;
    if (need <= buf->cap) return 1;
    uint64_t cap = buf->cap ? buf->cap : 64;
    while (cap < need) cap *= 2;
    uint8_t *bigger = cap <= 0x40000000u ? (uint8_t *)wp_alloc((uint32_t)cap) : 0;
    if (!bigger) {
        buf->failed = 1;
        return 0;
    }
    for (uint32_t i = 0; i < buf->len; i++) bigger[i] = buf->data[i];
    if (buf->data) wp_free(buf->data, buf->cap);
    buf->data = bigger;
    buf->cap = (uint32_t)cap;
    return 1;
}

static inline void wp_buf_append(wp_buf *buf, const void *bytes, uint32_t len) {
    if (!wp_buf_reserve(buf, len)) return;
    const uint8_t *from = (const uint8_t *)bytes;
    for (uint32_t i = 0; i < len; i++) buf->data[buf->len + i] = from[i];
    buf->len += len;
}

static inline void wp_buf_text(wp_buf *buf, const char *text) {
    uint32_t len = 0;
    while (text[len]) len++;
    wp_buf_append(buf, text, len);
}

/* The output buffer of the plugin: clear it at the start of a call, return wp_output_result(). */
static wp_buf wp_output;

static inline wp_buf *wp_output_begin(void) {
    wp_output.len = 0;
    wp_output.failed = 0;
    return &wp_output;
}

/* The result of a call whose output is wp_output (an error when memory ran out). */
static inline uint64_t wp_output_result(void) {
    if (wp_output.failed) {
        static const char message[] = "{\"message\":\"out of memory while writing the output\"}";
        wp_error(message, sizeof message - 1);
        return WP_FAILED;
    }
    return wp_result(wp_output.data, wp_output.len);
}

/* Refuse the input with a message (plain text, escaped here) and return from the function. */
static inline uint64_t wp_fail(const char *message) {
    wp_buf *buf = wp_output_begin();
    wp_buf_text(buf, "{\"message\":\"");
    for (const char *p = message; *p; p++) {
        if (*p == '"' || *p == '\\') wp_buf_append(buf, "\\", 1);
        if ((unsigned char)*p >= 0x20) wp_buf_append(buf, p, 1);
    }
    wp_buf_text(buf, "\"}");
    if (!buf->failed) wp_error(buf->data, buf->len);
    return WP_FAILED;
}

#endif /* WP_KIT_H */
