/* runtime._tracing._otlp_fast: the common case of `otlp_wire.Encoder.add`, in C.
 *
 * Optional: built when a C compiler and Python's headers are there (pyproject's
 * ext-modules, optional = true); `otlp_wire` falls back to its Python encoder otherwise.
 * It writes exactly the bytes the Python encoder writes (a test compares them), for the
 * items it takes: span items (16-tuples) without tracestate, events or links, whose
 * attribute keys are str and values str, bool, int or float; route items (12) and
 * worker items (17) without tracestate. Every other item (resource declarations, spans
 * of other shapes, anything malformed) is handed back for the Python encoder, which
 * raises what it raises for a malformed item.
 *
 *   add(items, groups) -> (spans added, items left for Python)
 *
 * `groups` is the encoder's dict: (resource number, scope name) -> list of bytes. Each
 * call appends one bytes object to the list of each group it wrote spans of: the spans
 * one after another, each as a ScopeSpans.spans field (tag, length, Span message).
 *
 * It runs on the node's event loop for every span (~1 µs an invocation), so it avoids
 * work that adds up there: spans are written straight into one buffer per group (kept
 * from call to call) rather than into an object each; attribute keys are encoded once
 * and found again by identity; an invocation's items share one trace id object, read
 * once; and on CPython 3.11 an int's digits are read as they are.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    unsigned char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
} Buf;

static int grow(Buf *b, Py_ssize_t more) {
    Py_ssize_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + more) {
        cap *= 2;
    }
    unsigned char *data = PyMem_Realloc(b->data, (size_t)cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

/* Room for `more` bytes after b->len; then write through b->data + b->len. */
static inline int reserve(Buf *b, Py_ssize_t more) {
    return b->len + more <= b->cap ? 0 : grow(b, more);
}

static inline unsigned char *w_varint(unsigned char *p, uint64_t v) {
    while (v >= 0x80) {
        *p++ = (unsigned char)((v & 0x7F) | 0x80);
        v >>= 7;
    }
    *p++ = (unsigned char)v;
    return p;
}

static inline int varint_size(uint64_t v) {
    int n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static inline unsigned char *w_be64(unsigned char *p, uint64_t v) {
    for (int i = 7; i >= 0; i--) {
        p[i] = (unsigned char)(v & 0xFF);
        v >>= 8;
    }
    return p + 8;
}

static inline unsigned char *w_le64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) {
        p[i] = (unsigned char)(v & 0xFF);
        v >>= 8;
    }
    return p + 8;
}

static inline int put(Buf *b, const void *src, Py_ssize_t n) {
    if (reserve(b, n) < 0) {
        return -1;
    }
    memcpy(b->data + b->len, src, (size_t)n);
    b->len += n;
    return 0;
}

static inline int put_byte(Buf *b, unsigned char c) {
    if (reserve(b, 1) < 0) {
        return -1;
    }
    b->data[b->len++] = c;
    return 0;
}

static inline int put_varint(Buf *b, uint64_t v) {
    if (reserve(b, 10) < 0) {
        return -1;
    }
    b->len = w_varint(b->data + b->len, v) - b->data;
    return 0;
}

/* A Python int as an unsigned 64-bit value; -1 (no exception set) if it is not an int
 * or does not fit. */
static int as_u64(PyObject *o, uint64_t *out) {
    if (!PyLong_Check(o)) {
        return -1;
    }
#if PY_VERSION_HEX < 0x030C0000 && PyLong_SHIFT == 30
    /* CPython 3.11's layout: the signed digit count in ob_size, 30-bit digits (the
     * generic path below costs several calls; this runs ~20 times an invocation) */
    Py_ssize_t size = Py_SIZE(o);
    const digit *d = ((PyLongObject *)o)->ob_digit;
    if (size >= 0 && size <= 2) {
        *out = size == 0 ? 0 : (uint64_t)d[0] | (size == 2 ? (uint64_t)d[1] << 30 : 0);
        return 0;
    }
    if (size == 3 && (d[2] >> 4) == 0) {
        *out = (uint64_t)d[0] | (uint64_t)d[1] << 30 | (uint64_t)d[2] << 60;
        return 0;
    }
    return -1;
#else
    /* not negative, at most 64 bits: then the masked value is the value */
    if (_PyLong_Sign(o) < 0) {
        return -1;
    }
    size_t bits = _PyLong_NumBits(o);
    if (bits == (size_t)-1 || bits > 64) {
        PyErr_Clear();
        return -1;
    }
    *out = (uint64_t)PyLong_AsUnsignedLongLongMask(o);
    return 0;
#endif
}

/* A str's UTF-8; NULL (no exception set) if not a str or not encodable as is. */
static const char *utf8(PyObject *o, Py_ssize_t *n) {
    if (!PyUnicode_Check(o)) {
        return NULL;
    }
    const char *s = PyUnicode_AsUTF8AndSize(o, n);
    if (s == NULL) {
        PyErr_Clear();
    }
    return s;
}

/* tag, length, bytes */
static int put_field(Buf *b, unsigned char tag, const char *s, Py_ssize_t n) {
    if (reserve(b, 11 + n) < 0) {
        return -1;
    }
    unsigned char *p = b->data + b->len;
    *p++ = tag;
    p = w_varint(p, (uint64_t)n);
    memcpy(p, s, (size_t)n);
    b->len = (p + n) - b->data;
    return 0;
}

/* An attribute key's KeyValue.key field (0x0a, length, UTF-8), cached by the key's
 * identity: a span's keys are the same str objects from call to call (module
 * constants), so this is a pointer comparison, not an encoding, for all but the first. */
#define KEY_SLOTS 64
typedef struct {
    PyObject *key; /* a strong reference, so that the address is not reused */
    unsigned char *field;
    Py_ssize_t len;
} KeySlot;
static KeySlot key_cache[KEY_SLOTS];

/* 0 (and *field, *len set: valid until the next call), 1 if `key` is not a str or not
 * encodable, -1 on error. */
static int key_field(PyObject *key, const unsigned char **field, Py_ssize_t *len) {
    KeySlot *slot = &key_cache[((uintptr_t)key >> 4) % KEY_SLOTS];
    if (slot->key == key) {
        *field = slot->field;
        *len = slot->len;
        return 0;
    }
    if (!PyUnicode_Check(key)) {
        return 1;
    }
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(key, &n);
    if (s == NULL) {
        PyErr_Clear();
        return 1;
    }
    unsigned char *enc = PyMem_Malloc((size_t)n + 11);
    if (enc == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    unsigned char *p = enc;
    *p++ = 0x0a;
    p = w_varint(p, (uint64_t)n);
    memcpy(p, s, (size_t)n);
    /* replace what the slot held: the slot is whole again before the old key is let go
     * (which could run code, a str subclass's __del__, that uses the cache) */
    PyObject *old_key = slot->key;
    unsigned char *old_field = slot->field;
    Py_INCREF(key);
    slot->key = key;
    slot->field = enc;
    slot->len = (p + n) - enc;
    PyMem_Free(old_field);
    Py_XDECREF(old_key);
    if (slot->field != enc) {  /* replaced again meanwhile: let Python encode this one */
        return 1;
    }
    *field = enc;
    *len = slot->len;
    return 0;
}

/* One Span.attributes field (tag 0x4a): KeyValue{key, AnyValue} for a str, bool, int or
 * float value. 0 written, 1 not taken (nothing written), -1 on error. */
static int attribute(Buf *b, PyObject *key, PyObject *value) {
    const unsigned char *kf;
    Py_ssize_t kn;
    int r = key_field(key, &kf, &kn);
    if (r != 0) {
        return r;
    }
    /* the AnyValue's body: its one field, and that field's size */
    const char *s = NULL;
    Py_ssize_t sn = 0;
    uint64_t u = 0;
    double d = 0.0;
    unsigned char kind;
    Py_ssize_t vlen;
    if (PyUnicode_Check(value)) {
        s = PyUnicode_AsUTF8AndSize(value, &sn);
        if (s == NULL) {
            PyErr_Clear();
            return 1;
        }
        kind = 0x0a;
        vlen = 1 + varint_size((uint64_t)sn) + sn;
    } else if (PyBool_Check(value)) {
        kind = 0x10;
        u = value == Py_True;
        vlen = 2;
    } else if (PyLong_Check(value)) {
        /* as Python's `n & (2**64 - 1)`: two's complement for negatives */
        unsigned long long m = PyLong_AsUnsignedLongLongMask(value);
        if (m == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            return 1;
        }
        kind = 0x18;
        u = (uint64_t)m;
        vlen = 1 + varint_size(u);
    } else if (PyFloat_Check(value)) {
        kind = 0x21;
        d = PyFloat_AS_DOUBLE(value);
        vlen = 9;
    } else {
        return 1;
    }
    /* KeyValue: the key field, then 0x12 AnyValue */
    uint64_t kv_len = (uint64_t)kn + 1 + (uint64_t)varint_size((uint64_t)vlen) + (uint64_t)vlen;
    if (reserve(b, 1 + 10 + (Py_ssize_t)kv_len) < 0) {
        return -1;
    }
    unsigned char *p = b->data + b->len;
    *p++ = 0x4a;
    p = w_varint(p, kv_len);
    memcpy(p, kf, (size_t)kn);
    p += kn;
    *p++ = 0x12;
    p = w_varint(p, (uint64_t)vlen);
    *p++ = kind;
    if (kind == 0x0a) {
        p = w_varint(p, (uint64_t)sn);
        memcpy(p, s, (size_t)sn);
        p += sn;
    } else if (kind == 0x21) {
        uint64_t bits;
        memcpy(&bits, &d, 8);
        p = w_le64(p, bits);
    } else {
        p = w_varint(p, u);
    }
    b->len = p - b->data;
    return 0;
}

/* state for the module */
static PyObject *STR_STOIC;   /* "stoic" */
static PyObject *STR_R;       /* "r" */
static PyObject *STR_W;       /* "w" */

/* A trace id (an int, 0 <= id < 2**128) as its 16 big-endian bytes; 1 (no exception set)
 * if it is not such an int. */
static int trace_bytes(PyObject *trace_id, unsigned char out[16]) {
    if (!PyLong_Check(trace_id)) {
        return 1;
    }
#if PY_VERSION_HEX >= 0x030D0000
    Py_ssize_t n = PyLong_AsNativeBytes(trace_id, out, 16,
                                        Py_ASNATIVEBYTES_BIG_ENDIAN |
                                        Py_ASNATIVEBYTES_UNSIGNED_BUFFER |
                                        Py_ASNATIVEBYTES_REJECT_NEGATIVE);
    if (n < 0) {
        PyErr_Clear();
        return 1;
    }
    return n > 16;
#else
    if (_PyLong_AsByteArray((PyLongObject *)trace_id, out, 16, 0, 0) < 0) {
        PyErr_Clear();
        return 1;
    }
    return 0;
#endif
}

/* Span fields 1, 2 and 4: trace id, span id, parent span id (if any). */
static int put_ids(Buf *b, const unsigned char trace[16], uint64_t span_id,
                   uint64_t parent_id) {
    if (reserve(b, 38) < 0) {
        return -1;
    }
    unsigned char *p = b->data + b->len;
    *p++ = 0x0a;
    *p++ = 0x10;
    memcpy(p, trace, 16);
    p += 16;
    *p++ = 0x12;
    *p++ = 0x08;
    p = w_be64(p, span_id);
    if (parent_id) {
        *p++ = 0x22;
        *p++ = 0x08;
        p = w_be64(p, parent_id);
    }
    b->len = p - b->data;
    return 0;
}

/* name (5), kind (6), status (15), flags (16): as `Encoder._fixed`. */
static int put_fixed(Buf *b, PyObject *name, long kind, long code, PyObject *description,
                     int remote) {
    Py_ssize_t nn, dn;
    const char *n = utf8(name, &nn);
    const char *d = utf8(description, &dn);
    if (n == NULL || d == NULL) {
        return 1;
    }
    if (put_field(b, 0x2a, n, nn) < 0 || reserve(b, 2 + 2 + 10 + 2 + 6) < 0) {
        return -1;
    }
    unsigned char *p = b->data + b->len;
    *p++ = 0x30;
    *p++ = (unsigned char)((kind >= 0 && kind < 5) ? kind + 1 : 0);
    int has_code = code > 0 && code < 3;
    if (code == 0 && dn == 0) {
        *p++ = 0x7a;
        *p++ = 0x00;
    } else {
        uint64_t body = 0;
        if (dn) {
            body += 1 + (uint64_t)varint_size((uint64_t)dn) + (uint64_t)dn;
        }
        if (has_code) {
            body += 2;
        }
        *p++ = 0x7a;
        p = w_varint(p, body);
        b->len = p - b->data;
        if (dn && put_field(b, 0x12, d, dn) < 0) {
            return -1;
        }
        if (reserve(b, 2 + 6) < 0) {
            return -1;
        }
        p = b->data + b->len;
        if (has_code) {
            *p++ = 0x18;
            *p++ = (unsigned char)code;
        }
    }
    /* flags: parent remote-ness known (bit 8), parent remote (bit 9) */
    *p++ = 0x85;
    *p++ = 0x01;
    *p++ = 0x00;
    *p++ = (unsigned char)(remote ? 0x03 : 0x01);
    *p++ = 0x00;
    *p++ = 0x00;
    b->len = p - b->data;
    return 0;
}

static int put_times(Buf *b, uint64_t start, uint64_t end) {
    if (reserve(b, 18) < 0) {
        return -1;
    }
    unsigned char *p = b->data + b->len;
    *p++ = 0x39;
    p = w_le64(p, start);
    *p++ = 0x41;
    p = w_le64(p, end ? end : start);
    b->len = p - b->data;
    return 0;
}

/* What every span starts with, in the Python encoder's order: ids (1, 2, 4), name,
 * kind, status and flags (5, 6, 15, 16), times (7, 8). 0, 1 (not taken) or -1. */
static int span_head(Buf *b, const unsigned char trace[16], uint64_t span_id,
                     uint64_t parent_id, PyObject *name, long kind, long code,
                     PyObject *description, int remote, uint64_t start, uint64_t end) {
    if (put_ids(b, trace, span_id, parent_id) < 0) {
        return -1;
    }
    int r = put_fixed(b, name, kind, code, description, remote);
    if (r == 0 && put_times(b, start, end) < 0) {
        r = -1;
    }
    return r;
}

static int item_u64(PyObject *item, Py_ssize_t i, uint64_t *out) {
    return as_u64(PyTuple_GET_ITEM(item, i), out);
}

static int item_long(PyObject *item, Py_ssize_t i, long *out) {
    PyObject *o = PyTuple_GET_ITEM(item, i);
    if (!PyLong_Check(o)) {
        return -1;
    }
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    *out = v;
    return 0;
}

static int empty_str(PyObject *o) { return PyUnicode_Check(o) && PyUnicode_GET_LENGTH(o) == 0; }

static int truth(PyObject *o) {
    if (o == Py_True) {
        return 1;
    }
    if (o == Py_False || o == Py_None) {
        return 0;
    }
    int r = PyObject_IsTrue(o);
    if (r < 0) {
        PyErr_Clear();
        return 0;
    }
    return r;
}

/* The trace id of an item as bytes, remembered for the next item: an invocation's
 * items share one int object. */
typedef struct {
    PyObject *id; /* borrowed: the items outlive the call */
    unsigned char bytes[16];
} TraceMemo;

static int trace_of(TraceMemo *memo, PyObject *trace_id) {
    if (trace_id == memo->id && trace_id != NULL) {
        return 0;
    }
    if (trace_bytes(trace_id, memo->bytes) != 0) {
        memo->id = NULL;
        return 1;
    }
    memo->id = trace_id;
    return 0;
}

/* A 16-tuple span item. 0: written; 1: not taken; -1: error. */
static int span(Buf *b, TraceMemo *memo, PyObject *item) {
    uint64_t span_id, parent_id, start, end;
    long kind, code;
    PyObject *attributes = PyTuple_GET_ITEM(item, 9);
    PyObject *events = PyTuple_GET_ITEM(item, 10);
    PyObject *links = PyTuple_GET_ITEM(item, 11);
    if (!empty_str(PyTuple_GET_ITEM(item, 3))) {
        return 1;  /* tracestate: rare */
    }
    if ((events != Py_None && PyObject_IsTrue(events) != 0) ||
        (links != Py_None && PyObject_IsTrue(links) != 0)) {
        PyErr_Clear();
        return 1;
    }
    if (item_u64(item, 2, &span_id) || item_u64(item, 4, &parent_id) ||
        item_long(item, 6, &kind) || item_u64(item, 7, &start) || item_u64(item, 8, &end) ||
        item_long(item, 12, &code)) {
        return 1;
    }
    if (!(attributes == Py_None || PyDict_Check(attributes))) {
        return 1;
    }
    if (trace_of(memo, PyTuple_GET_ITEM(item, 1)) != 0) {
        return 1;
    }
    int remote = parent_id != 0 && truth(PyTuple_GET_ITEM(item, 5));
    int r = span_head(b, memo->bytes, span_id, parent_id, PyTuple_GET_ITEM(item, 0), kind,
                      code, PyTuple_GET_ITEM(item, 13), remote, start, end);
    if (r != 0) {
        return r;
    }
    if (attributes != Py_None) {
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        while (PyDict_Next(attributes, &pos, &key, &value)) {
            r = attribute(b, key, value);
            if (r != 0) {
                return r;
            }
        }
    }
    return 0;
}

/* name strings and attribute keys, made once */
static PyObject *S_ROUTE, *S_EXECUTE, *S_HANDLER, *S_EMPTY;
static PyObject *K_INV, *K_FUNCTION, *K_ATTEMPT, *K_TARGET, *K_PID;

/* the attributes of a compact item's spans: invocation id, function, attempt, last */
static int compact_attributes(Buf *b, PyObject *inv, PyObject *function, PyObject *attempt,
                              PyObject *last_key, PyObject *last) {
    int r;
    if ((r = attribute(b, K_INV, inv)) != 0 || (r = attribute(b, K_FUNCTION, function)) != 0 ||
        (r = attribute(b, K_ATTEMPT, attempt)) != 0 || (r = attribute(b, last_key, last)) != 0) {
        return r;
    }
    return 0;
}

/* ("r", trace_id, span_id, state, parent_id, start, end, function, inv, attempt, target,
 * resource) */
static int route(Buf *b, TraceMemo *memo, PyObject *item) {
    uint64_t span_id, parent_id, start, end;
    if (!empty_str(PyTuple_GET_ITEM(item, 3)) || item_u64(item, 2, &span_id) ||
        item_u64(item, 4, &parent_id) || item_u64(item, 5, &start) ||
        item_u64(item, 6, &end) || parent_id == 0 ||
        trace_of(memo, PyTuple_GET_ITEM(item, 1)) != 0) {
        return 1;
    }
    int r = span_head(b, memo->bytes, span_id, parent_id, S_ROUTE, 0, 0, S_EMPTY, 0, start,
                      end);
    if (r != 0) {
        return r;
    }
    return compact_attributes(b, PyTuple_GET_ITEM(item, 8), PyTuple_GET_ITEM(item, 7),
                              PyTuple_GET_ITEM(item, 9), K_TARGET, PyTuple_GET_ITEM(item, 10));
}

/* ("w", trace_id, execute_id, state, parent_id, handler_id, execute_start, handler_start,
 * handler_end, execute_end, function, inv, attempt, pid, error, resource, scope):
 * two spans, into `b` and `b2`. */
static int worker(Buf *b, Buf *b2, TraceMemo *memo, PyObject *item) {
    uint64_t execute_id, parent_id, handler_id, es, hs, he, ee;
    PyObject *error = PyTuple_GET_ITEM(item, 14);
    if (!empty_str(PyTuple_GET_ITEM(item, 3)) || item_u64(item, 2, &execute_id) ||
        item_u64(item, 4, &parent_id) || item_u64(item, 5, &handler_id) ||
        item_u64(item, 6, &es) || item_u64(item, 7, &hs) || item_u64(item, 8, &he) ||
        item_u64(item, 9, &ee) || parent_id == 0 || execute_id == 0 ||
        !PyUnicode_Check(error) || trace_of(memo, PyTuple_GET_ITEM(item, 1)) != 0) {
        return 1;
    }
    int r = span_head(b, memo->bytes, execute_id, parent_id, S_EXECUTE, 1, 0, S_EMPTY, 0, es,
                      ee);
    if (r != 0) {
        return r;
    }
    Py_ssize_t attrs_at = b->len;
    r = compact_attributes(b, PyTuple_GET_ITEM(item, 11), PyTuple_GET_ITEM(item, 10),
                           PyTuple_GET_ITEM(item, 12), K_PID, PyTuple_GET_ITEM(item, 13));
    if (r != 0) {
        return r;
    }
    int failed = PyUnicode_GET_LENGTH(error) != 0;
    r = span_head(b2, memo->bytes, handler_id, execute_id, S_HANDLER, 0, failed ? 2 : 0,
                  error, 0, hs, he);
    if (r != 0) {
        return r;
    }
    return put(b2, b->data + attrs_at, b->len - attrs_at);
}

/* The spans of one (resource, scope) group written so far in this call: each as
 * ScopeSpans.spans field (tag 0x12, length, Span message), one after another. */
#define GROUP_SLOTS 8
typedef struct {
    PyObject *resource, *scope; /* borrowed from the items */
    Buf *spans;
} Group;

/* Buffers kept from call to call (a batch's group grows one to a few kB: allocated
 * once, not at every call); a nested call (an item's __eq__ calling back, say) gets its
 * own. One that grew past KEEP_MAX is let go. */
#define BUFS (GROUP_SLOTS + 2)
#define KEEP_MAX (1 << 20)
static Buf kept[BUFS];
static int kept_busy;

/* Append tag, length and `span` to `to`. */
static int append_span(Buf *to, const Buf *span) {
    if (reserve(to, 11 + span->len) < 0) {
        return -1;
    }
    unsigned char *p = to->data + to->len;
    *p++ = 0x12;
    p = w_varint(p, (uint64_t)span->len);
    memcpy(p, span->data, (size_t)span->len);
    to->len = (p + span->len) - to->data;
    return 0;
}

/* Hand the groups' spans to `groups` (key (resource, scope) -> list of bytes, made if
 * missing): one bytes object per group, in the order the groups were first used. */
static int flush_groups(PyObject *groups, Group *slots, int used) {
    for (int i = 0; i < used; i++) {
        Group *g = &slots[i];
        if (g->spans->len == 0) {
            continue;
        }
        PyObject *key = PyTuple_Pack(2, g->resource, g->scope);
        if (key == NULL) {
            return -1;
        }
        PyObject *group = PyDict_GetItemWithError(groups, key);
        if (group == NULL) {
            if (PyErr_Occurred()) {
                Py_DECREF(key);
                return -1;
            }
            group = PyList_New(0);
            if (group == NULL || PyDict_SetItem(groups, key, group) < 0) {
                Py_XDECREF(group);
                Py_DECREF(key);
                return -1;
            }
            Py_DECREF(group);  /* the dict holds it */
        }
        Py_DECREF(key);
        if (!PyList_Check(group)) {
            PyErr_SetString(PyExc_TypeError, "a group is not a list");
            return -1;
        }
        PyObject *bytes = PyBytes_FromStringAndSize((const char *)g->spans->data,
                                                    g->spans->len);
        if (bytes == NULL) {
            return -1;
        }
        int rc = PyList_Append(group, bytes);
        Py_DECREF(bytes);
        if (rc < 0) {
            return -1;
        }
        g->spans->len = 0;
    }
    return 0;
}

/* The slot of (resource, scope), taken if new; NULL on error. When all slots are taken
 * (more groups than slots in one call: rare), their spans are handed over first. */
static Group *group_slot(PyObject *groups, Group *slots, int *used, PyObject *resource,
                         PyObject *scope) {
    for (int i = 0; i < *used; i++) {
        Group *g = &slots[i];
        /* (the same object compares equal without a call) */
        int same = PyObject_RichCompareBool(resource, g->resource, Py_EQ);
        if (same == 1) {
            same = PyObject_RichCompareBool(scope, g->scope, Py_EQ);
        }
        if (same < 0) {
            return NULL;
        }
        if (same == 1) {
            return g;
        }
    }
    if (*used == GROUP_SLOTS) {
        if (flush_groups(groups, slots, *used) < 0) {
            return NULL;
        }
        *used = 0;
    }
    Group *g = &slots[(*used)++];
    g->resource = resource;
    g->scope = scope;
    g->spans->len = 0;
    return g;
}

static PyObject *fast_add(PyObject *self, PyObject *args) {
    PyObject *items, *groups;
    if (!PyArg_ParseTuple(args, "OO!:add", &items, &PyDict_Type, &groups)) {
        return NULL;
    }
    PyObject *seq = PySequence_Fast(items, "items must be a sequence");
    if (seq == NULL) {
        return NULL;
    }
    PyObject *rest = PyList_New(0);
    if (rest == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    PyObject *result = NULL;
    Buf own[BUFS];
    memset(own, 0, sizeof own);
    int keeping = !kept_busy;
    Buf *bufs = keeping ? kept : own;
    kept_busy = 1;
    Buf *b = &bufs[0], *b2 = &bufs[1];
    Group slots[GROUP_SLOTS];
    for (int i = 0; i < GROUP_SLOTS; i++) {
        slots[i].resource = slots[i].scope = NULL;
        slots[i].spans = &bufs[2 + i];
    }
    int used = 0;
    TraceMemo memo = {NULL, {0}};
    long count = 0;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **all = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = all[i];
        int r = 1;
        PyObject *res = NULL, *scope = NULL;
        b->len = 0;
        b2->len = 0;
        if (PyTuple_CheckExact(item)) {
            Py_ssize_t size = PyTuple_GET_SIZE(item);
            if (size == 16) {
                r = span(b, &memo, item);
                res = PyTuple_GET_ITEM(item, 14);
                scope = PyTuple_GET_ITEM(item, 15);
            } else if (size == 12 && PyUnicode_Check(PyTuple_GET_ITEM(item, 0)) &&
                       PyUnicode_Compare(PyTuple_GET_ITEM(item, 0), STR_R) == 0) {
                r = route(b, &memo, item);
                res = PyTuple_GET_ITEM(item, 11);
                scope = STR_STOIC;
            } else if (size == 17 && PyUnicode_Check(PyTuple_GET_ITEM(item, 0)) &&
                       PyUnicode_Compare(PyTuple_GET_ITEM(item, 0), STR_W) == 0) {
                r = worker(b, b2, &memo, item);
                res = PyTuple_GET_ITEM(item, 15);
                scope = PyTuple_GET_ITEM(item, 16);
            }
        }
        if (r < 0) {
            goto done;
        }
        if (r == 1) {
            PyErr_Clear();
            if (PyList_Append(rest, item) < 0) {
                goto done;
            }
            continue;
        }
        Group *g = group_slot(groups, slots, &used, res, scope);
        if (g == NULL || append_span(g->spans, b) < 0) {
            goto done;
        }
        count++;
        if (b2->len) {
            if (append_span(g->spans, b2) < 0) {
                goto done;
            }
            count++;
        }
    }
    if (flush_groups(groups, slots, used) == 0) {
        result = Py_BuildValue("(lO)", count, rest);
    }
done:
    for (int i = 0; i < BUFS; i++) {
        if (!keeping || bufs[i].cap > KEEP_MAX) {
            PyMem_Free(bufs[i].data);
            bufs[i].data = NULL;
            bufs[i].cap = 0;
        }
        bufs[i].len = 0;
    }
    if (keeping) {
        kept_busy = 0;
    }
    Py_DECREF(seq);
    Py_DECREF(rest);
    return result;
}

static PyMethodDef methods[] = {
    {"add", fast_add, METH_VARARGS,
     "add(items, groups) -> (spans added, items left for the Python encoder)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_otlp_fast",
    "The common case of otlp_wire.Encoder.add, in C (optional).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__otlp_fast(void) {
    STR_STOIC = PyUnicode_InternFromString("stoic");
    STR_R = PyUnicode_InternFromString("r");
    STR_W = PyUnicode_InternFromString("w");
    S_ROUTE = PyUnicode_InternFromString("stoic.route");
    S_EXECUTE = PyUnicode_InternFromString("stoic.worker.execute");
    S_HANDLER = PyUnicode_InternFromString("stoic.handler");
    S_EMPTY = PyUnicode_InternFromString("");
    K_INV = PyUnicode_InternFromString("stoic.invocation_id");
    K_FUNCTION = PyUnicode_InternFromString("stoic.function");
    K_ATTEMPT = PyUnicode_InternFromString("stoic.attempt");
    K_TARGET = PyUnicode_InternFromString("stoic.route.target");
    K_PID = PyUnicode_InternFromString("process.pid");
    if (!STR_STOIC || !STR_R || !STR_W || !S_ROUTE || !S_EXECUTE || !S_HANDLER || !S_EMPTY ||
        !K_INV || !K_FUNCTION || !K_ATTEMPT || !K_TARGET || !K_PID) {
        return NULL;
    }
    return PyModule_Create(&module);
}
