/*
 * wp_json.h: a small JSON reader and writer for guests (header-only, freestanding, with wp_kit.h).
 *
 * Reading: the input of a call is a JSON document; look members of its top-level object up:
 *
 *     char name[64]; uint32_t name_len;
 *     if (wp_json_string(input, len, "name", name, sizeof name, &name_len) != WP_JSON_FOUND) ...
 *     int64_t n;
 *     int found = wp_json_int(input, len, "n", &n);
 *
 * Each lookup returns WP_JSON_FOUND, WP_JSON_MISSING (no such member, or the input is not an
 * object) or WP_JSON_INVALID (the member has another type, a string is longer than the buffer,
 * or the document is malformed). Strings are unescaped (\uXXXX included, as UTF-8).
 *
 * Writing: append to a wp_buf (wp_kit.h): wp_json_put_string() escapes, wp_json_put_int()
 * formats, wp_buf_text() appends raw JSON such as "{" or ",\"count\":".
 */
#ifndef WP_JSON_H
#define WP_JSON_H

#include <stdint.h>

#include "wp_kit.h"

#define WP_JSON_FOUND 1
#define WP_JSON_MISSING 0
#define WP_JSON_INVALID (-1)
#define WP_JSON_MAX_DEPTH 64

typedef struct {
    const uint8_t *at;
    const uint8_t *end;
} wp_json_cursor;

static inline void wp_json_space(wp_json_cursor *c) {
    while (c->at < c->end && (*c->at == ' ' || *c->at == '\t' || *c->at == '\n' || *c->at == '\r'))
        c->at++;
}

/* Skip a string whose opening quote is at c->at; 0 when malformed. */
static inline int wp_json_skip_string(wp_json_cursor *c) {
    c->at++;
    while (c->at < c->end) {
        uint8_t ch = *c->at++;
        if (ch == '"') return 1;
        if (ch == '\\') {
            if (c->at >= c->end) return 0;
            c->at++;
        } else if (ch < 0x20) {
            return 0;
        }
    }
    return 0;
}

static inline int wp_json_skip_value(wp_json_cursor *c, int depth) {
    wp_json_space(c);
    if (c->at >= c->end || depth > WP_JSON_MAX_DEPTH) return 0;
    uint8_t ch = *c->at;
    if (ch == '"') return wp_json_skip_string(c);
    if (ch == '{' || ch == '[') {
        uint8_t close = ch == '{' ? '}' : ']';
        c->at++;
        wp_json_space(c);
        if (c->at < c->end && *c->at == close) {
            c->at++;
            return 1;
        }
        for (;;) {
            if (ch == '{') {
                wp_json_space(c);
                if (c->at >= c->end || *c->at != '"' || !wp_json_skip_string(c)) return 0;
                wp_json_space(c);
                if (c->at >= c->end || *c->at++ != ':') return 0;
            }
            if (!wp_json_skip_value(c, depth + 1)) return 0;
            wp_json_space(c);
            if (c->at >= c->end) return 0;
            if (*c->at == ',') {
                c->at++;
                continue;
            }
            if (*c->at++ == close) return 1;
            return 0;
        }
    }
    const uint8_t *start = c->at;
    while (c->at < c->end && *c->at != ',' && *c->at != '}' && *c->at != ']' && *c->at != ' ' &&
           *c->at != '\n' && *c->at != '\r' && *c->at != '\t')
        c->at++;
    return c->at > start;
}

/* Does the string at c->at (a quote) equal key (no escapes in the key)? Moves past the string. */
static inline int wp_json_key_is(wp_json_cursor *c, const char *key) {
    const uint8_t *start = c->at + 1;
    if (!wp_json_skip_string(c)) return -1;
    const uint8_t *stop = c->at - 1;
    const uint8_t *p = start;
    for (; *key && p < stop; key++, p++)
        if (*p != (uint8_t)*key) return 0;
    return *key == 0 && p == stop;
}

/* Position c at the value of the top-level member `key`. */
static inline int wp_json_find(const uint8_t *json, uint32_t len, const char *key, wp_json_cursor *c) {
    c->at = json;
    c->end = json + len;
    wp_json_space(c);
    if (c->at >= c->end || *c->at != '{') return WP_JSON_MISSING;
    c->at++;
    for (;;) {
        wp_json_space(c);
        if (c->at < c->end && *c->at == '}') return WP_JSON_MISSING;
        if (c->at >= c->end || *c->at != '"') return WP_JSON_INVALID;
        int same = wp_json_key_is(c, key);
        if (same < 0) return WP_JSON_INVALID;
        wp_json_space(c);
        if (c->at >= c->end || *c->at++ != ':') return WP_JSON_INVALID;
        wp_json_space(c);
        if (same) return WP_JSON_FOUND;
        if (!wp_json_skip_value(c, 1)) return WP_JSON_INVALID;
        wp_json_space(c);
        if (c->at < c->end && *c->at == ',') {
            c->at++;
            continue;
        }
        return c->at < c->end && *c->at == '}' ? WP_JSON_MISSING : WP_JSON_INVALID;
    }
}

static inline int wp_json_hex(uint8_t ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* The string member `key`, unescaped into out (at most cap bytes; not NUL-terminated). */
static inline int wp_json_string(const uint8_t *json, uint32_t len, const char *key, char *out,
                                 uint32_t cap, uint32_t *out_len) {
    wp_json_cursor c;
    int found = wp_json_find(json, len, key, &c);
    if (found != WP_JSON_FOUND) return found;
    if (c.at >= c.end || *c.at != '"') return WP_JSON_INVALID;
    c.at++;
    uint32_t n = 0;
    while (c.at < c.end) {
        uint8_t ch = *c.at++;
        uint32_t code = ch;
        if (ch == '"') {
            *out_len = n;
            return WP_JSON_FOUND;
        }
        if (ch < 0x20) return WP_JSON_INVALID;
        if (ch == '\\') {
            if (c.at >= c.end) return WP_JSON_INVALID;
            ch = *c.at++;
            switch (ch) {
                case 'n': code = '\n'; break;
                case 't': code = '\t'; break;
                case 'r': code = '\r'; break;
                case 'b': code = '\b'; break;
                case 'f': code = '\f'; break;
                case 'u':
                    code = 0;
                    for (int i = 0; i < 4; i++) {
                        int digit = c.at < c.end ? wp_json_hex(*c.at++) : -1;
                        if (digit < 0) return WP_JSON_INVALID;
                        code = code * 16 + (uint32_t)digit;
                    }
                    break;
                default: code = ch;
            }
        }
        uint8_t bytes[3];
        uint32_t count = 1;
        if (code < 0x80 || ch == code) {
            bytes[0] = (uint8_t)code;
        } else if (code < 0x800) {
            bytes[0] = (uint8_t)(0xC0 | (code >> 6));
            bytes[1] = (uint8_t)(0x80 | (code & 0x3F));
            count = 2;
        } else {
            bytes[0] = (uint8_t)(0xE0 | (code >> 12));
            bytes[1] = (uint8_t)(0x80 | ((code >> 6) & 0x3F));
            bytes[2] = (uint8_t)(0x80 | (code & 0x3F));
            count = 3;
        }
        if (n + count > cap) return WP_JSON_INVALID;
        for (uint32_t i = 0; i < count; i++) out[n++] = (char)bytes[i];
    }
    return WP_JSON_INVALID;
}

/* The integer member `key` (no fraction, no exponent). */
static inline int wp_json_int(const uint8_t *json, uint32_t len, const char *key, int64_t *out) {
    wp_json_cursor c;
    int found = wp_json_find(json, len, key, &c);
    if (found != WP_JSON_FOUND) return found;
    int negative = c.at < c.end && *c.at == '-';
    if (negative) c.at++;
    if (c.at >= c.end || *c.at < '0' || *c.at > '9') return WP_JSON_INVALID;
    uint64_t value = 0;
    while (c.at < c.end && *c.at >= '0' && *c.at <= '9') {
        if (value > (UINT64_C(1) << 62)) return WP_JSON_INVALID;
        value = value * 10 + (uint64_t)(*c.at++ - '0');
    }
    if (c.at < c.end && (*c.at == '.' || *c.at == 'e' || *c.at == 'E')) return WP_JSON_INVALID;
    *out = negative ? -(int64_t)value : (int64_t)value;
    return WP_JSON_FOUND;
}

/* Append a JSON string (quotes included) of len UTF-8 bytes. */
static inline void wp_json_put_string(wp_buf *buf, const char *text, uint32_t len) {
    static const char hex[] = "0123456789abcdef";
    wp_buf_append(buf, "\"", 1);
    for (uint32_t i = 0; i < len; i++) {
        uint8_t ch = (uint8_t)text[i];
        if (ch == '"' || ch == '\\') {
            char escaped[2] = {'\\', (char)ch};
            wp_buf_append(buf, escaped, 2);
        } else if (ch < 0x20) {
            char escaped[6] = {'\\', 'u', '0', '0', hex[ch >> 4], hex[ch & 15]};
            wp_buf_append(buf, escaped, 6);
        } else {
            wp_buf_append(buf, &text[i], 1);
        }
    }
    wp_buf_append(buf, "\"", 1);
}

static inline void wp_json_put_int(wp_buf *buf, int64_t value) {
    char digits[24];
    int n = 0;
    uint64_t magnitude = value < 0 ? (uint64_t)0 - (uint64_t)value : (uint64_t)value;
    do {
        digits[n++] = (char)('0' + magnitude % 10);
        magnitude /= 10;
    } while (magnitude);
    if (value < 0) wp_buf_append(buf, "-", 1);
    while (n) wp_buf_append(buf, &digits[--n], 1);
}

#endif /* WP_JSON_H */
