/*
 * wasm_plugins.h: the C (and C++) declarations of guest ABI 1 for wasm-plugins guests.
 *
 * hostapi/ABI.md is normative; this is the short version.
 *
 *   A module exports its linear memory as "memory", an allocator
 *       void *wp_alloc(uint32_t size);          (0 when there is no room)
 *       void  wp_free(void *ptr, uint32_t size); (size = what was asked of wp_alloc)
 *   and any number of plugin functions
 *       uint64_t name(uint8_t *input, uint32_t len);
 *   each returning wp_result(output, output_len), i.e. (out_ptr << 32) | out_len.
 *
 *   One call: the host encodes the input (compact UTF-8 JSON by default), copies it into a buffer it
 *   got from wp_alloc, calls the function once, then copies the output out of guest memory.
 *
 * Ownership:
 *   - The INPUT buffer belongs to the host. The guest may read and even write it (to transform in
 *     place) during the call, but must not free it nor keep pointers into it after returning: the
 *     host reuses it for the next call, and replaces it (wp_free, then wp_alloc) when an input is
 *     larger than any before.
 *   - The OUTPUT belongs to the guest and must stay unchanged until the guest's next call on the
 *     same instance. A single output buffer reused (and grown) across calls is the simplest way to
 *     satisfy this without leaking; the output may also point into the input buffer.
 *   - The host never calls wp_alloc or wp_free while a plugin function runs, and never calls into
 *     one instance from two threads at once.
 *
 * Errors: to refuse an input, call wp_error() with a UTF-8 JSON object
 *   {"message": "...", "details": ...} and return (the return value is then ignored; returning 0
 *   is the convention). The host raises a runtime error whose trap is "guest_error". Traps
 *   (unreachable, out-of-bounds access, ...) also fail the call, but discard the instance.
 *
 * Imports: everything lives in the import module "wasm_plugins". Every import except wp_error is
 * gated by a capability the plugin's manifest must grant; importing one that is not granted makes
 * the module fail to load. With wasm-ld, a function that is declared here but never called is not
 * imported, so including this header costs no capability.
 *
 * Freestanding: only <stdint.h> and <stddef.h> are used; the header compiles as C99 and as C++.
 * Compiled for a target other than WebAssembly, the import and export attributes vanish, so plugin
 * logic can be unit-tested natively against stub implementations of the imports.
 */
#ifndef WASM_PLUGINS_H
#define WASM_PLUGINS_H

#include <stddef.h>
#include <stdint.h>

#define WP_ABI_VERSION 1

#if defined(__wasm__)
/* Import a host function of module "wasm_plugins" under the ABI name `name`. */
#define WP_IMPORT(name) __attribute__((import_module("wasm_plugins"), import_name(#name)))
/* Export a definition under `name`, e.g. WP_EXPORT(word_count) uint64_t word_count(...). */
#define WP_EXPORT(name) __attribute__((export_name(#name)))
#else
#define WP_IMPORT(name)
#define WP_EXPORT(name)
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Log levels for wp_log(). */
#define WP_LOG_TRACE 0
#define WP_LOG_DEBUG 1
#define WP_LOG_INFO 2
#define WP_LOG_WARNING 3
#define WP_LOG_ERROR 4

/* Returned by the copy-out functions (config_get, kv_get) when there is no value. */
#define WP_NO_VALUE (-1)

/* ---- What the guest defines (and exports with WP_EXPORT) ------------------------------------ */

void *wp_alloc(uint32_t size);
void wp_free(void *ptr, uint32_t size);

/* ---- Host imports (ABI.md section 4) ---------------------------------------------------------- */

/* No capability: report a handled error, a JSON object {"message": ..., "details": ...}. */
WP_IMPORT(error) void wp_error(const void *ptr, uint32_t len);

/* Capability "log": level is one of WP_LOG_*; the message is UTF-8 text. */
WP_IMPORT(log) void wp_log(int32_t level, const void *ptr, uint32_t len);

/*
 * Copy-out functions write at most out_cap bytes to out_ptr and return the full length of the
 * value (call again with a larger buffer when it is more than out_cap: nothing was written), or
 * WP_NO_VALUE when there is none.
 */

/* Capability "config": the configuration value for key (text; JSON for non-string values). */
WP_IMPORT(config_get)
int32_t wp_config_get(const void *key_ptr, uint32_t key_len, void *out_ptr, uint32_t out_cap);

/* Capability "kv": this plugin's own key-value store. */
WP_IMPORT(kv_get)
int32_t wp_kv_get(const void *key_ptr, uint32_t key_len, void *out_ptr, uint32_t out_cap);
/* 0 on success, -1 when the store's quota would be exceeded. */
WP_IMPORT(kv_set)
int32_t wp_kv_set(const void *key_ptr, uint32_t key_len, const void *val_ptr, uint32_t val_len);
/* 1 when a value was deleted, 0 when there was none. */
WP_IMPORT(kv_delete) int32_t wp_kv_delete(const void *key_ptr, uint32_t key_len);

/* Capability "clock": nanoseconds since the Unix epoch (UTC), and from an arbitrary origin. */
WP_IMPORT(clock_now) int64_t wp_clock_now(void);
WP_IMPORT(clock_monotonic) int64_t wp_clock_monotonic(void);

/* Capability "random": fill len bytes (at most 64 KiB per call) with random data; 0 on success. */
WP_IMPORT(random_fill) int32_t wp_random_fill(void *ptr, uint32_t len);

/* ---- Helpers ---------------------------------------------------------------------------------- */

/* The return value of a plugin function: (out_ptr << 32) | out_len. */
static inline uint64_t wp_result(const void *ptr, uint32_t len) {
    return ((uint64_t)(uint32_t)(uintptr_t)ptr << 32) | (uint64_t)len;
}

/* The return value after wp_error(): the host ignores it, so an empty result is conventional. */
#define WP_FAILED ((uint64_t)0)

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* WASM_PLUGINS_H */
