/*
 * text_tools.c: the text-tools plugin (word counts, slugs, word frequencies) for guest ABI 1.
 *
 * Freestanding C: no libc and no WASI, only the "wasm_plugins.error" import. Build it with
 * plugins/build.py; the committed text_tools.wasm is its output.
 *
 * Every function takes a JSON object and returns JSON (codec "json"). Input text is UTF-8; a
 * \uXXXX escape (surrogate pairs included) is decoded, and a lone surrogate, escaped or raw, is
 * read as U+FFFD. A field that is null counts as absent; unknown fields are ignored; when a field
 * appears twice the last one wins.
 *
 * word_count  {"text": str} -> {"words": int, "lines": int, "characters": int, "bytes": int}
 *   words       maximal runs of characters that are not whitespace. Whitespace is the Unicode
 *               White_Space set plus the ASCII separators U+001C..U+001F (exactly the characters
 *               for which Python's str.isspace() is true, so words == len(text.split())).
 *   lines       the number of "\n", plus one when the text is not empty and does not end with
 *               "\n" (an unterminated last line still counts; "" has 0 lines, "a\n" and "a" 1).
 *               "\r" alone is not a line break; "\r\n" is one.
 *   characters  Unicode code points.
 *   bytes       bytes of the text in UTF-8.
 *
 * slugify  {"text": str, "separator": str = "-"} -> str
 *   ASCII letters are lower-cased and ASCII digits kept. Letters of Latin-1 Supplement and Latin
 *   Extended-A (U+00C0..U+017F) are transliterated to their unaccented lower-case ASCII letters
 *   ("é" -> "e", "Ł" -> "l", "ß" -> "ss", "Æ" -> "ae", "Þ" -> "th"). Every other character
 *   (punctuation, whitespace, other scripts, non-ASCII digits, "×" and "÷") separates: each run of
 *   them becomes one separator, and there is none at the start or the end. Text without any
 *   letter or digit gives "".
 *
 * top_words  {"text": str, "n": int = 10} -> [{"word": str, "count": int}, ...]
 *   Words here are maximal runs of ASCII letters and digits, lower-cased; everything else,
 *   non-ASCII characters included, separates them ("don't" is "don" and "t"). The result lists at
 *   most n words, the most frequent first, ties in ascending (byte) order. n must be a
 *   non-negative integer (no fraction, no exponent); n = 0 gives [].
 *
 * Bad input (invalid JSON or UTF-8, not an object, a missing or mistyped field) is reported through
 * the error import as {"message": ..., "details": {...}} and the function returns 0: it never traps
 * on input. Running out of memory is reported the same way (the host then names the memory limit).
 *
 * Memory: a size-class allocator serves both the host (wp_alloc/wp_free) and the plugin. Freed
 * blocks are kept per power-of-two class and reused, so memory is bounded by the largest call,
 * however many calls are made. The output buffer is kept for the next call and grown as needed;
 * the input is decoded in place, inside the host's buffer, which the ABI allows.
 */
#include "wasm_plugins.h"

/* ==== Allocator ================================================================================ */

/* Blocks are powers of two from 16 bytes; wp_free receives the size, so no block has a header. */
#define MIN_CLASS 4u
#define CLASS_COUNT 32u
#define PAGE_BYTES 65536u

extern unsigned char __heap_base;

static uint32_t heap_top;
static void *free_lists[CLASS_COUNT];

/* The smallest class k with (1 << k) >= size, or CLASS_COUNT when size needs more than 2 GiB. */
static uint32_t size_class(uint32_t size) {
    if (size <= (1u << MIN_CLASS)) return MIN_CLASS;
    return 32u - (uint32_t)__builtin_clz(size - 1u);
}

static void *bump(uint32_t k) {
    if (heap_top == 0) heap_top = ((uint32_t)(uintptr_t)&__heap_base + 15u) & ~15u;
    uint64_t end = (uint64_t)heap_top + ((uint64_t)1 << k);
    uint64_t have = (uint64_t)__builtin_wasm_memory_size(0) * PAGE_BYTES;
    if (end >= ((uint64_t)1 << 32)) return 0;
    if (end > have) {
        uint64_t pages = (end - have + PAGE_BYTES - 1u) / PAGE_BYTES;
        if (__builtin_wasm_memory_grow(0, (size_t)pages) == (size_t)-1) return 0;
    }
    void *block = (void *)(uintptr_t)heap_top;
    heap_top = (uint32_t)end;
    return block;
}

WP_EXPORT(wp_alloc) void *wp_alloc(uint32_t size) {
    uint32_t k = size_class(size);
    if (k >= CLASS_COUNT) return 0;
    void *block = free_lists[k];
    if (block) {
        free_lists[k] = *(void **)block;
        return block;
    }
    return bump(k);
}

WP_EXPORT(wp_free) void wp_free(void *ptr, uint32_t size) {
    uint32_t k = size_class(size);
    if (!ptr || k >= CLASS_COUNT) return;
    *(void **)ptr = free_lists[k];
    free_lists[k] = ptr;
}

/* ==== Byte buffers: the output (growable, kept across calls) and the error payload ============= */

typedef struct {
    uint8_t *data;
    uint32_t len;
    uint32_t cap;
    int growable;
    int failed;
} Buf;

static Buf out = {0, 0, 0, 1, 0};
/* Error payloads are short and fixed in shape: a static buffer works even when memory is gone. */
static uint8_t error_storage[768];
static Buf err = {error_storage, 0, sizeof error_storage, 0, 0};

static int reserve(Buf *b, uint32_t extra) {
    if (b->failed) return 0;
    uint64_t need = (uint64_t)b->len + extra;
    if (need <= b->cap) return 1;
    if (!b->growable) {
        b->failed = 1;
        return 0;
    }
    uint64_t cap = b->cap ? b->cap : 256u;
    while (cap < need) cap <<= 1;
    uint8_t *bigger = cap <= 0x80000000u ? (uint8_t *)wp_alloc((uint32_t)cap) : 0;
    if (!bigger) {
        b->failed = 1;
        return 0;
    }
    if (b->len) __builtin_memcpy(bigger, b->data, b->len);
    if (b->data) wp_free(b->data, b->cap);
    b->data = bigger;
    b->cap = (uint32_t)cap;
    return 1;
}

static void put_bytes(Buf *b, const void *src, uint32_t n) {
    if (!reserve(b, n)) return;
    if (n) __builtin_memcpy(b->data + b->len, src, n);
    b->len += n;
}

static void put_byte(Buf *b, uint8_t c) {
    if (!reserve(b, 1)) return;
    b->data[b->len++] = c;
}

static uint32_t cstr_len(const char *s) {
    uint32_t n = 0;
    while (s[n]) n++;
    return n;
}

static void put_str(Buf *b, const char *s) { put_bytes(b, s, cstr_len(s)); }

static void put_uint(Buf *b, uint64_t v) {
    uint8_t digits[20];
    uint32_t n = 0;
    do {
        digits[n++] = (uint8_t)('0' + v % 10u);
        v /= 10u;
    } while (v);
    if (!reserve(b, n)) return;
    while (n) b->data[b->len++] = digits[--n];
}

/* The body of a JSON string (no quotes) for valid UTF-8 bytes: UTF-8 passes through unchanged. */
static void put_escaped(Buf *b, const uint8_t *s, uint32_t n) {
    static const char hex[] = "0123456789abcdef";
    for (uint32_t i = 0; i < n; i++) {
        uint8_t c = s[i];
        if (!reserve(b, 6)) return;
        uint8_t *w = b->data + b->len;
        if (c == '"' || c == '\\') {
            w[0] = '\\';
            w[1] = c;
            b->len += 2;
        } else if (c == '\n') {
            w[0] = '\\';
            w[1] = 'n';
            b->len += 2;
        } else if (c == '\t') {
            w[0] = '\\';
            w[1] = 't';
            b->len += 2;
        } else if (c == '\r') {
            w[0] = '\\';
            w[1] = 'r';
            b->len += 2;
        } else if (c < 0x20) {
            w[0] = '\\';
            w[1] = 'u';
            w[2] = '0';
            w[3] = '0';
            w[4] = (uint8_t)hex[c >> 4];
            w[5] = (uint8_t)hex[c & 15u];
            b->len += 6;
        } else {
            w[0] = c;
            b->len += 1;
        }
    }
}

static void put_json_string(Buf *b, const uint8_t *s, uint32_t n) {
    put_byte(b, '"');
    put_escaped(b, s, n);
    put_byte(b, '"');
}

static void out_begin(void) {
    out.len = 0;
    out.failed = 0;
}

/* ==== Reporting errors ========================================================================= */

static void err_begin(const char *message) {
    err.len = 0;
    err.failed = 0;
    put_str(&err, "{\"message\":");
    put_json_string(&err, (const uint8_t *)message, cstr_len(message));
    put_str(&err, ",\"details\":{");
}

static void err_field(const char *key, const char *value, int comma) {
    if (comma) put_byte(&err, ',');
    put_json_string(&err, (const uint8_t *)key, cstr_len(key));
    put_byte(&err, ':');
    put_json_string(&err, (const uint8_t *)value, cstr_len(value));
}

static uint64_t err_send(void) {
    put_str(&err, "}}");
    wp_error(err.data, err.len);
    return WP_FAILED;
}

/* Messages are built in a small stack buffer from fixed parts (fields and type names). */
typedef struct {
    char text[160];
    uint32_t len;
} Message;

static void msg_add(Message *m, const char *s) {
    while (*s && m->len + 1 < sizeof m->text) m->text[m->len++] = *s++;
    m->text[m->len] = 0;
}

static void msg_add_uint(Message *m, uint32_t v) {
    char digits[11];
    uint32_t n = 0;
    do {
        digits[n++] = (char)('0' + v % 10u);
        v /= 10u;
    } while (v);
    char rev[11];
    for (uint32_t i = 0; i < n; i++) rev[i] = digits[n - 1 - i];
    rev[n] = 0;
    msg_add(m, rev);
}

static uint64_t fail_json(const char *reason, uint32_t offset) {
    Message m = {{0}, 0};
    msg_add(&m, "input is not valid JSON: ");
    msg_add(&m, reason);
    msg_add(&m, " at byte ");
    msg_add_uint(&m, offset);
    err_begin(m.text);
    err_field("reason", reason, 0);
    put_str(&err, ",\"offset\":");
    put_uint(&err, offset);
    return err_send();
}

static uint64_t fail_not_object(const char *got) {
    Message m = {{0}, 0};
    msg_add(&m, "input must be a JSON object, got ");
    msg_add(&m, got);
    err_begin(m.text);
    err_field("expected", "object", 0);
    err_field("got", got, 1);
    return err_send();
}

static uint64_t fail_missing(const char *field) {
    Message m = {{0}, 0};
    msg_add(&m, "missing required field '");
    msg_add(&m, field);
    msg_add(&m, "'");
    err_begin(m.text);
    err_field("field", field, 0);
    err_field("problem", "missing", 1);
    return err_send();
}

/* "field 'n' must be a non-negative integer, got array": `expected` is a noun phrase. */
static uint64_t fail_type(const char *field, const char *expected, const char *got) {
    Message m = {{0}, 0};
    msg_add(&m, "field '");
    msg_add(&m, field);
    msg_add(&m, "' must be a ");
    msg_add(&m, expected);
    msg_add(&m, ", got ");
    msg_add(&m, got);
    err_begin(m.text);
    err_field("field", field, 0);
    err_field("expected", expected, 1);
    err_field("got", got, 1);
    return err_send();
}

static uint64_t fail_memory(void) {
    err_begin("out of memory: the result needs more memory than the plugin may use");
    err_field("resource", "memory", 0);
    return err_send();
}

/* The result of a function that wrote its output to `out`. */
static uint64_t out_finish(void) {
    if (out.failed) return fail_memory();
    return wp_result(out.data, out.len);
}

/* ==== JSON reader ============================================================================== */

enum { J_ABSENT, J_NULL, J_BOOL, J_NUMBER, J_STRING, J_ARRAY, J_OBJECT };

static const char *const type_names[] = {"nothing", "null",  "boolean", "number",
                                         "string",  "array", "object"};

/* A JSON value: strings are decoded (in place), numbers are their source text. */
typedef struct {
    int type;
    uint8_t *ptr;
    uint32_t len;
} JValue;

typedef struct {
    uint8_t *s;
    uint32_t len;
    uint32_t pos;
    const char *error;
    uint32_t error_pos;
} Parser;

/* Deep enough for any sensible input, shallow enough that recursion cannot exhaust the stack. */
#define MAX_DEPTH 64

static int parse_value(Parser *p, JValue *v, int depth);

static int fail_at(Parser *p, const char *message) {
    if (!p->error) {
        p->error = message;
        p->error_pos = p->pos;
    }
    return 0;
}

static void skip_ws(Parser *p) {
    while (p->pos < p->len) {
        uint8_t c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') return;
        p->pos++;
    }
}

static int hex_value(uint8_t c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Four hex digits at s[at..at+4), or -1. */
static int32_t hex4(const Parser *p, uint32_t at) {
    if (at > p->len || p->len - at < 4) return -1;
    int32_t v = 0;
    for (uint32_t i = 0; i < 4; i++) {
        int d = hex_value(p->s[at + i]);
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

static uint32_t encode_utf8(uint8_t *w, uint32_t cp) {
    if (cp < 0x80) {
        w[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        w[0] = (uint8_t)(0xC0 | (cp >> 6));
        w[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        w[0] = (uint8_t)(0xE0 | (cp >> 12));
        w[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        w[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    w[0] = (uint8_t)(0xF0 | (cp >> 18));
    w[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    w[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    w[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

/* memcmp without libc: bulk memory covers memcpy and memset, but has no compare. */
static int compare_bytes(const void *a, const void *b, uint32_t n) {
    const uint8_t *x = (const uint8_t *)a, *y = (const uint8_t *)b;
    for (uint32_t i = 0; i < n; i++)
        if (x[i] != y[i]) return x[i] < y[i] ? -1 : 1;
    return 0;
}

static int is_cont(uint8_t c) { return (c & 0xC0) == 0x80; }

/*
 * Length of the UTF-8 sequence at s (avail bytes), 0 when it is invalid. A three-byte encoding of
 * a surrogate (what Python's "surrogatepass" makes of a lone surrogate) sets *surrogate.
 */
static uint32_t utf8_sequence(const uint8_t *s, uint32_t avail, int *surrogate) {
    uint8_t c = s[0];
    *surrogate = 0;
    if (c < 0x80) return 1;
    if (c < 0xC2) return 0;
    if (c < 0xE0) return avail >= 2 && is_cont(s[1]) ? 2 : 0;
    if (c < 0xF0) {
        if (avail < 3 || !is_cont(s[1]) || !is_cont(s[2])) return 0;
        if (c == 0xE0 && s[1] < 0xA0) return 0;
        if (c == 0xED && s[1] >= 0xA0) *surrogate = 1;
        return 3;
    }
    if (c < 0xF5) {
        if (avail < 4 || !is_cont(s[1]) || !is_cont(s[2]) || !is_cont(s[3])) return 0;
        if (c == 0xF0 && s[1] < 0x90) return 0;
        if (c == 0xF4 && s[1] >= 0x90) return 0;
        return 4;
    }
    return 0;
}

/*
 * A string at p->pos (the opening quote), decoded into the bytes it was read from: a decoded
 * string is never longer than its JSON form, so writing trails reading.
 */
static int parse_string(Parser *p, JValue *v) {
    uint8_t *s = p->s;
    uint32_t start = ++p->pos;
    uint32_t w = start;
    for (;;) {
        if (p->pos >= p->len) return fail_at(p, "unterminated string");
        uint8_t c = s[p->pos];
        if (c == '"') {
            p->pos++;
            v->type = J_STRING;
            v->ptr = s + start;
            v->len = w - start;
            return 1;
        }
        if (c == '\\') {
            if (p->len - p->pos < 2) return fail_at(p, "unterminated string");
            uint8_t e = s[p->pos + 1];
            uint32_t cp;
            switch (e) {
            case '"': case '\\': case '/': cp = e; break;
            case 'b': cp = '\b'; break;
            case 'f': cp = '\f'; break;
            case 'n': cp = '\n'; break;
            case 'r': cp = '\r'; break;
            case 't': cp = '\t'; break;
            case 'u': {
                int32_t unit = hex4(p, p->pos + 2);
                if (unit < 0) return fail_at(p, "invalid \\u escape");
                p->pos += 6;
                cp = (uint32_t)unit;
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    int32_t low = -1;
                    if (p->len - p->pos >= 6 && s[p->pos] == '\\' && s[p->pos + 1] == 'u')
                        low = hex4(p, p->pos + 2);
                    if (low >= 0xDC00 && low <= 0xDFFF) {
                        cp = 0x10000 + ((cp - 0xD800) << 10) + ((uint32_t)low - 0xDC00);
                        p->pos += 6;
                    } else {
                        cp = 0xFFFD;
                    }
                } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                    cp = 0xFFFD;
                }
                w += encode_utf8(s + w, cp);
                continue;
            }
            default: return fail_at(p, "invalid escape");
            }
            s[w++] = (uint8_t)cp;
            p->pos += 2;
            continue;
        }
        if (c < 0x20) return fail_at(p, "control character in string");
        if (c < 0x80) {
            s[w++] = c;
            p->pos++;
            continue;
        }
        int surrogate;
        uint32_t from = p->pos;
        uint32_t n = utf8_sequence(s + from, p->len - from, &surrogate);
        if (!n) return fail_at(p, "invalid UTF-8");
        p->pos += n;
        if (surrogate) {
            w += encode_utf8(s + w, 0xFFFD);
        } else {
            for (uint32_t i = 0; i < n; i++) s[w++] = s[from + i];
        }
    }
}

static int is_digit(uint8_t c) { return c >= '0' && c <= '9'; }

static int parse_number(Parser *p, JValue *v) {
    uint8_t *s = p->s;
    uint32_t start = p->pos;
    if (s[p->pos] == '-') p->pos++;
    if (p->pos >= p->len || !is_digit(s[p->pos])) return fail_at(p, "invalid number");
    if (s[p->pos] == '0') {
        p->pos++;
    } else {
        while (p->pos < p->len && is_digit(s[p->pos])) p->pos++;
    }
    if (p->pos < p->len && s[p->pos] == '.') {
        p->pos++;
        if (p->pos >= p->len || !is_digit(s[p->pos])) return fail_at(p, "invalid number");
        while (p->pos < p->len && is_digit(s[p->pos])) p->pos++;
    }
    if (p->pos < p->len && (s[p->pos] == 'e' || s[p->pos] == 'E')) {
        p->pos++;
        if (p->pos < p->len && (s[p->pos] == '+' || s[p->pos] == '-')) p->pos++;
        if (p->pos >= p->len || !is_digit(s[p->pos])) return fail_at(p, "invalid number");
        while (p->pos < p->len && is_digit(s[p->pos])) p->pos++;
    }
    v->type = J_NUMBER;
    v->ptr = s + start;
    v->len = p->pos - start;
    return 1;
}

static int parse_literal(Parser *p, const char *word, int type, JValue *v) {
    uint32_t n = cstr_len(word);
    if (p->len - p->pos < n) return fail_at(p, "invalid literal");
    for (uint32_t i = 0; i < n; i++)
        if (p->s[p->pos + i] != (uint8_t)word[i]) return fail_at(p, "invalid literal");
    p->pos += n;
    v->type = type;
    v->ptr = 0;
    v->len = 0;
    return 1;
}

/*
 * The members of an object at p->pos (the opening brace). A member whose key is one of
 * `names[0..count)` is stored in `found` (the last occurrence wins); the others are checked and
 * skipped.
 */
static int parse_object(Parser *p, int depth, const char *const *names, JValue *found,
                        uint32_t count) {
    if (depth >= MAX_DEPTH) return fail_at(p, "nesting deeper than 64 levels");
    p->pos++;
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == '}') {
        p->pos++;
        return 1;
    }
    for (;;) {
        skip_ws(p);
        if (p->pos >= p->len || p->s[p->pos] != '"') return fail_at(p, "expected a string key");
        JValue key;
        if (!parse_string(p, &key)) return 0;
        skip_ws(p);
        if (p->pos >= p->len || p->s[p->pos] != ':') return fail_at(p, "expected ':'");
        p->pos++;
        JValue value;
        if (!parse_value(p, &value, depth + 1)) return 0;
        for (uint32_t i = 0; i < count; i++) {
            uint32_t n = cstr_len(names[i]);
            if (n == key.len && compare_bytes(key.ptr, names[i], n) == 0) found[i] = value;
        }
        skip_ws(p);
        if (p->pos >= p->len) return fail_at(p, "unterminated object");
        if (p->s[p->pos] == ',') {
            p->pos++;
            continue;
        }
        if (p->s[p->pos] == '}') {
            p->pos++;
            return 1;
        }
        return fail_at(p, "expected ',' or '}'");
    }
}

static int parse_array(Parser *p, int depth) {
    if (depth >= MAX_DEPTH) return fail_at(p, "nesting deeper than 64 levels");
    p->pos++;
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == ']') {
        p->pos++;
        return 1;
    }
    for (;;) {
        JValue item;
        if (!parse_value(p, &item, depth + 1)) return 0;
        skip_ws(p);
        if (p->pos >= p->len) return fail_at(p, "unterminated array");
        if (p->s[p->pos] == ',') {
            p->pos++;
            continue;
        }
        if (p->s[p->pos] == ']') {
            p->pos++;
            return 1;
        }
        return fail_at(p, "expected ',' or ']'");
    }
}

static int parse_value(Parser *p, JValue *v, int depth) {
    skip_ws(p);
    if (p->pos >= p->len) return fail_at(p, "unexpected end of input");
    v->ptr = 0;
    v->len = 0;
    switch (p->s[p->pos]) {
    case '"': return parse_string(p, v);
    case '{': v->type = J_OBJECT; return parse_object(p, depth, 0, 0, 0);
    case '[': v->type = J_ARRAY; return parse_array(p, depth);
    case 't': return parse_literal(p, "true", J_BOOL, v);
    case 'f': return parse_literal(p, "false", J_BOOL, v);
    case 'n': return parse_literal(p, "null", J_NULL, v);
    default:
        if (p->s[p->pos] == '-' || is_digit(p->s[p->pos])) return parse_number(p, v);
        return fail_at(p, "unexpected character");
    }
}

/*
 * Read the input object and pick out the fields named in `names`: 1 on success, 0 after an error
 * was reported. An absent field, or one that is null, has type J_ABSENT.
 */
static int read_input(uint8_t *in, uint32_t len, const char *const *names, JValue *found,
                      uint32_t count) {
    Parser p = {in, len, 0, 0, 0};
    for (uint32_t i = 0; i < count; i++) found[i].type = J_ABSENT;
    skip_ws(&p);
    int is_object = p.pos < p.len && in[p.pos] == '{';
    JValue whole = {J_OBJECT, 0, 0};
    int ok = is_object ? parse_object(&p, 0, names, found, count) : parse_value(&p, &whole, 0);
    if (ok) {
        skip_ws(&p);
        if (p.pos != p.len) ok = fail_at(&p, "unexpected data after the JSON value");
    }
    if (!ok) {
        fail_json(p.error, p.error_pos);
        return 0;
    }
    if (!is_object) {
        fail_not_object(type_names[whole.type]);
        return 0;
    }
    for (uint32_t i = 0; i < count; i++)
        if (found[i].type == J_NULL) found[i].type = J_ABSENT;
    return 1;
}

/* ==== Text helpers ============================================================================= */

/* The code point at s, which holds valid UTF-8 (checked by the reader). */
static uint32_t decode_utf8(const uint8_t *s, uint32_t *cp) {
    uint8_t c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c < 0xE0) {
        *cp = ((uint32_t)(c & 0x1F) << 6) | (s[1] & 0x3Fu);
        return 2;
    }
    if (c < 0xF0) {
        *cp = ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3Fu);
        return 3;
    }
    *cp = ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
          ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3Fu);
    return 4;
}

static int is_space(uint32_t cp) {
    if (cp < 0x80) return cp == ' ' || (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x1F);
    if (cp < 0x1680) return cp == 0x85 || cp == 0xA0;
    return cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
           cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

static int is_ascii_alnum(uint32_t c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static uint8_t ascii_lower(uint8_t c) { return c >= 'A' && c <= 'Z' ? (uint8_t)(c + 32) : c; }

/* Transliterations of U+00C0..U+017F; "" for the two that are not letters (U+00D7, U+00F7). */
#define TRANSLIT_FIRST 0xC0u
#define TRANSLIT_END 0x180u
static const char translit[TRANSLIT_END - TRANSLIT_FIRST][3] = {
    /* U+00C0 */ "a", "a", "a", "a", "a", "a", "ae", "c", "e", "e", "e", "e", "i", "i", "i", "i",
    /* U+00D0 */ "d", "n", "o", "o", "o", "o", "o", "", "o", "u", "u", "u", "u", "y", "th", "ss",
    /* U+00E0 */ "a", "a", "a", "a", "a", "a", "ae", "c", "e", "e", "e", "e", "i", "i", "i", "i",
    /* U+00F0 */ "d", "n", "o", "o", "o", "o", "o", "", "o", "u", "u", "u", "u", "y", "th", "y",
    /* U+0100 */ "a", "a", "a", "a", "a", "a", "c", "c", "c", "c", "c", "c", "c", "c", "d", "d",
    /* U+0110 */ "d", "d", "e", "e", "e", "e", "e", "e", "e", "e", "e", "e", "g", "g", "g", "g",
    /* U+0120 */ "g", "g", "g", "g", "h", "h", "h", "h", "i", "i", "i", "i", "i", "i", "i", "i",
    /* U+0130 */ "i", "i", "ij", "ij", "j", "j", "k", "k", "k", "l", "l", "l", "l", "l", "l", "l",
    /* U+0140 */ "l", "l", "l", "n", "n", "n", "n", "n", "n", "n", "ng", "ng", "o", "o", "o", "o",
    /* U+0150 */ "o", "o", "oe", "oe", "r", "r", "r", "r", "r", "r", "s", "s", "s", "s", "s", "s",
    /* U+0160 */ "s", "s", "t", "t", "t", "t", "t", "t", "u", "u", "u", "u", "u", "u", "u", "u",
    /* U+0170 */ "u", "u", "u", "u", "w", "w", "y", "y", "y", "z", "z", "z", "z", "z", "z", "s",
};

/* The value of an optional string field, or `fallback`; 0 after a type error was reported. */
static int optional_string(const JValue *v, const char *field, const uint8_t **ptr, uint32_t *len,
                           const char *fallback) {
    if (v->type == J_ABSENT) {
        *ptr = (const uint8_t *)fallback;
        *len = cstr_len(fallback);
        return 1;
    }
    if (v->type != J_STRING) {
        fail_type(field, "string", type_names[v->type]);
        return 0;
    }
    *ptr = v->ptr;
    *len = v->len;
    return 1;
}

/* The required "text" field: 0 after an error was reported. */
static int required_text(const JValue *v) {
    if (v->type == J_ABSENT) {
        fail_missing("text");
        return 0;
    }
    if (v->type != J_STRING) {
        fail_type("text", "string", type_names[v->type]);
        return 0;
    }
    return 1;
}

/* ==== word_count =============================================================================== */

static const char *const TEXT_ONLY[] = {"text"};

WP_EXPORT(word_count) uint64_t word_count(uint8_t *in, uint32_t len) {
    JValue fields[1];
    if (!read_input(in, len, TEXT_ONLY, fields, 1) || !required_text(&fields[0])) return WP_FAILED;
    const uint8_t *s = fields[0].ptr;
    uint32_t n = fields[0].len;
    uint64_t words = 0, lines = 0, characters = 0;
    int in_word = 0;
    for (uint32_t i = 0; i < n;) {
        uint32_t cp;
        i += decode_utf8(s + i, &cp);
        characters++;
        if (cp == '\n') lines++;
        if (is_space(cp)) {
            in_word = 0;
        } else if (!in_word) {
            in_word = 1;
            words++;
        }
    }
    if (n && s[n - 1] != '\n') lines++;
    out_begin();
    put_str(&out, "{\"words\":");
    put_uint(&out, words);
    put_str(&out, ",\"lines\":");
    put_uint(&out, lines);
    put_str(&out, ",\"characters\":");
    put_uint(&out, characters);
    put_str(&out, ",\"bytes\":");
    put_uint(&out, n);
    put_byte(&out, '}');
    return out_finish();
}

/* ==== slugify ================================================================================== */

static const char *const SLUGIFY_FIELDS[] = {"text", "separator"};

WP_EXPORT(slugify) uint64_t slugify(uint8_t *in, uint32_t len) {
    JValue fields[2];
    if (!read_input(in, len, SLUGIFY_FIELDS, fields, 2) || !required_text(&fields[0]))
        return WP_FAILED;
    const uint8_t *sep;
    uint32_t sep_len;
    if (!optional_string(&fields[1], "separator", &sep, &sep_len, "-")) return WP_FAILED;
    const uint8_t *s = fields[0].ptr;
    uint32_t n = fields[0].len;
    int pending = 0, any = 0;
    out_begin();
    put_byte(&out, '"');
    for (uint32_t i = 0; i < n;) {
        uint32_t cp;
        i += decode_utf8(s + i, &cp);
        uint8_t one[2];
        const char *letters = 0;
        if (cp < 0x80 && is_ascii_alnum(cp)) {
            one[0] = ascii_lower((uint8_t)cp);
            one[1] = 0;
            letters = (const char *)one;
        } else if (cp >= TRANSLIT_FIRST && cp < TRANSLIT_END && translit[cp - TRANSLIT_FIRST][0]) {
            letters = translit[cp - TRANSLIT_FIRST];
        }
        if (!letters) {
            pending = 1;
            continue;
        }
        if (pending && any) put_escaped(&out, sep, sep_len);
        pending = 0;
        any = 1;
        put_str(&out, letters);
    }
    put_byte(&out, '"');
    return out_finish();
}

/* ==== top_words ================================================================================ */

typedef struct {
    const uint8_t *word;
    uint32_t len;
    uint32_t count;
    uint32_t hash;
} Entry; /* 16 bytes: arrays of entries fill whole allocator classes */

typedef struct {
    Entry *entries;
    uint32_t count;
    uint32_t capacity;
    uint32_t *slots; /* open addressing; a slot holds an entry index + 1, 0 when empty */
    uint32_t slot_count;
} Table;

static void table_free(Table *t) {
    if (t->entries) wp_free(t->entries, t->capacity * (uint32_t)sizeof(Entry));
    if (t->slots) wp_free(t->slots, t->slot_count * 4u);
    t->entries = 0;
    t->slots = 0;
}

static int table_rehash(Table *t, uint32_t slot_count) {
    uint32_t *slots = (uint32_t *)wp_alloc(slot_count * 4u);
    if (!slots) return 0;
    __builtin_memset(slots, 0, slot_count * 4u);
    for (uint32_t i = 0; i < t->count; i++) {
        uint32_t at = t->entries[i].hash & (slot_count - 1u);
        while (slots[at]) at = (at + 1u) & (slot_count - 1u);
        slots[at] = i + 1u;
    }
    if (t->slots) wp_free(t->slots, t->slot_count * 4u);
    t->slots = slots;
    t->slot_count = slot_count;
    return 1;
}

static int table_init(Table *t) {
    t->count = 0;
    t->capacity = 256;
    t->slots = 0;
    t->slot_count = 0;
    t->entries = (Entry *)wp_alloc(t->capacity * (uint32_t)sizeof(Entry));
    return t->entries && table_rehash(t, 512);
}

static int table_add(Table *t, const uint8_t *word, uint32_t len, uint32_t hash) {
    uint32_t mask = t->slot_count - 1u;
    uint32_t at = hash & mask;
    while (t->slots[at]) {
        Entry *e = &t->entries[t->slots[at] - 1u];
        if (e->hash == hash && e->len == len && compare_bytes(e->word, word, len) == 0) {
            e->count++;
            return 1;
        }
        at = (at + 1u) & mask;
    }
    if (t->count == t->capacity) {
        /* Entries point into the text, so growing moves only the small fixed-size records. */
        uint32_t bytes = t->capacity * (uint32_t)sizeof(Entry);
        Entry *bigger = (Entry *)wp_alloc(bytes * 2u);
        if (!bigger) return 0;
        __builtin_memcpy(bigger, t->entries, bytes);
        wp_free(t->entries, bytes);
        t->entries = bigger;
        t->capacity *= 2u;
    }
    Entry *e = &t->entries[t->count];
    e->word = word;
    e->len = len;
    e->count = 1;
    e->hash = hash;
    t->slots[at] = ++t->count;
    /* A load factor of at most one half keeps probe sequences short. */
    return t->count * 2u <= t->slot_count || table_rehash(t, t->slot_count * 2u);
}

/* Whether a ranks before b: more frequent first, then ascending bytes. */
static int ranks_before(const Entry *a, const Entry *b) {
    if (a->count != b->count) return a->count > b->count;
    uint32_t n = a->len < b->len ? a->len : b->len;
    int c = compare_bytes(a->word, b->word, n);
    return c ? c < 0 : a->len < b->len;
}

/* Restore the heap below `root`: a parent ranks before its children. */
static void sift_down(Entry *heap, uint32_t size, uint32_t root) {
    for (;;) {
        uint32_t best = root, left = 2u * root + 1u, right = left + 1u;
        if (left < size && ranks_before(&heap[left], &heap[best])) best = left;
        if (right < size && ranks_before(&heap[right], &heap[best])) best = right;
        if (best == root) return;
        Entry tmp = heap[root];
        heap[root] = heap[best];
        heap[best] = tmp;
        root = best;
    }
}

static const char *const TOP_WORDS_FIELDS[] = {"text", "n"};

/* n as a count: 1 on success, 0 after an error was reported; huge values saturate. */
static int read_count(const JValue *v, uint32_t *n) {
    if (v->type == J_ABSENT) {
        *n = 10;
        return 1;
    }
    if (v->type != J_NUMBER) {
        fail_type("n", "non-negative integer", type_names[v->type]);
        return 0;
    }
    uint32_t i = 0, negative = v->ptr[0] == '-';
    uint64_t value = 0;
    for (i = negative; i < v->len; i++) {
        uint8_t c = v->ptr[i];
        if (!is_digit(c)) {
            fail_type("n", "non-negative integer", "a number with a fraction or exponent");
            return 0;
        }
        value = value * 10u + (uint32_t)(c - '0');
        if (value > 0xFFFFFFFFu) value = 0xFFFFFFFFu;
    }
    if (negative && value) {
        fail_type("n", "non-negative integer", "a negative number");
        return 0;
    }
    *n = (uint32_t)value;
    return 1;
}

WP_EXPORT(top_words) uint64_t top_words(uint8_t *in, uint32_t len) {
    JValue fields[2];
    uint32_t limit;
    if (!read_input(in, len, TOP_WORDS_FIELDS, fields, 2) || !required_text(&fields[0]) ||
        !read_count(&fields[1], &limit))
        return WP_FAILED;
    /* The text lives in the host's input buffer, which the guest may change during the call. */
    uint8_t *s = fields[0].ptr;
    uint32_t n = fields[0].len;
    Table table;
    if (!table_init(&table)) {
        table_free(&table);
        return fail_memory();
    }
    for (uint32_t i = 0; i < n;) {
        if (!is_ascii_alnum(s[i])) {
            i++;
            continue;
        }
        uint32_t start = i;
        uint32_t hash = 2166136261u; /* FNV-1a */
        for (; i < n && is_ascii_alnum(s[i]); i++) {
            s[i] = ascii_lower(s[i]);
            hash = (hash ^ s[i]) * 16777619u;
        }
        if (!table_add(&table, s + start, i - start, hash)) {
            table_free(&table);
            return fail_memory();
        }
    }
    /* Heap selection: only the `limit` best entries are ever fully ordered. */
    uint32_t size = table.count;
    for (uint32_t i = size / 2u; i-- > 0;) sift_down(table.entries, size, i);
    uint32_t take = limit < size ? limit : size;
    out_begin();
    put_byte(&out, '[');
    for (uint32_t k = 0; k < take; k++) {
        const Entry *best = &table.entries[0];
        if (k) put_byte(&out, ',');
        put_str(&out, "{\"word\":");
        put_json_string(&out, best->word, best->len);
        put_str(&out, ",\"count\":");
        put_uint(&out, best->count);
        put_byte(&out, '}');
        table.entries[0] = table.entries[--size];
        sift_down(table.entries, size, 0);
    }
    put_byte(&out, ']');
    table_free(&table);
    return out_finish();
}
