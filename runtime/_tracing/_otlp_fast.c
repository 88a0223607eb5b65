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
 * `groups` is the encoder's dict: (resource number, scope name) -> list of bytes; each
 * span becomes one bytes object there: Span field tag, length, Span message.
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

static int buf_reserve(Buf *b, Py_ssize_t more) {
    if (b->len + more <= b->cap) {
        return 0;
    }
    Py_ssize_t cap = b->cap ? b->cap : 512;
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

static inline int put(Buf *b, const void *src, Py_ssize_t n) {
    if (b->len + n > b->cap && buf_reserve(b, n) < 0) {
        return -1;
    }
    unsigned char *dst = b->data + b->len;
    if (n <= 16) {
        const unsigned char *from = src;
        for (Py_ssize_t i = 0; i < n; i++) {
            dst[i] = from[i];
        }
    } else {
        memcpy(dst, src, (size_t)n);
    }
    b->len += n;
    return 0;
}

static inline int put_byte(Buf *b, unsigned char c) {
    if (b->len + 1 > b->cap && buf_reserve(b, 1) < 0) {
        return -1;
    }
    b->data[b->len++] = c;
    return 0;
}

static int put_varint(Buf *b, uint64_t v) {
    unsigned char tmp[10];
    int n = 0;
    while (v >= 0x80) {
        tmp[n++] = (unsigned char)((v & 0x7F) | 0x80);
        v >>= 7;
    }
    tmp[n++] = (unsigned char)v;
    return put(b, tmp, n);
}

static int varint_size(uint64_t v) {
    int n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static int put_be64(Buf *b, uint64_t v) {
    unsigned char tmp[8];
    for (int i = 7; i >= 0; i--) {
        tmp[i] = (unsigned char)(v & 0xFF);
        v >>= 8;
    }
    return put(b, tmp, 8);
}

static int put_le64(Buf *b, uint64_t v) {
    unsigned char tmp[8];
    for (int i = 0; i < 8; i++) {
        tmp[i] = (unsigned char)(v & 0xFF);
        v >>= 8;
    }
    return put(b, tmp, 8);
}

/* A Python int as an unsigned 64-bit value; -1 (no exception set) if it is not an int
 * or does not fit. */
static int as_u64(PyObject *o, uint64_t *out) {
    if (!PyLong_Check(o)) {
        return -1;
    }
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
    if (put_byte(b, tag) < 0 || put_varint(b, (uint64_t)n) < 0) {
        return -1;
    }
    return put(b, s, n);
}

/* An AnyValue message for a str, bool, int or float (the body only). Returns 1 if the
 * value is of another type (nothing written), -1 on error. */
static int any_value(Buf *b, PyObject *v) {
    if (PyUnicode_Check(v)) {
        Py_ssize_t n;
        const char *s = utf8(v, &n);
        if (s == NULL) {
            return 1;
        }
        return put_field(b, 0x0a, s, n);
    }
    if (PyBool_Check(v)) {
        unsigned char tmp[2] = {0x10, v == Py_True ? 1 : 0};
        return put(b, tmp, 2);
    }
    if (PyLong_Check(v)) {
        /* as Python's `n & (2**64 - 1)`: two's complement for negatives */
        unsigned long long u = PyLong_AsUnsignedLongLongMask(v);
        if (u == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            return 1;
        }
        if (put_byte(b, 0x18) < 0) {
            return -1;
        }
        return put_varint(b, (uint64_t)u);
    }
    if (PyFloat_Check(v)) {
        double d = PyFloat_AS_DOUBLE(v);
        uint64_t bits;
        memcpy(&bits, &d, 8);
        if (put_byte(b, 0x21) < 0) {
            return -1;
        }
        return put_le64(b, bits);
    }
    return 1;
}

/* One Span.attributes field (tag 0x4a): KeyValue{key, value}. 1: not taken. */
static int attribute(Buf *b, Buf *scratch, PyObject *key, PyObject *value) {
    Py_ssize_t kn;
    const char *k = utf8(key, &kn);
    if (k == NULL) {
        return 1;
    }
    scratch->len = 0;
    int r = any_value(scratch, value);
    if (r != 0) {
        return r;
    }
    /* KeyValue: 0x0a key, 0x12 AnyValue */
    uint64_t kv_len = 1 + (uint64_t)varint_size((uint64_t)kn) + (uint64_t)kn + 1 +
                      (uint64_t)varint_size((uint64_t)scratch->len) + (uint64_t)scratch->len;
    if (put_byte(b, 0x4a) < 0 || put_varint(b, kv_len) < 0 || put_field(b, 0x0a, k, kn) < 0 ||
        put_field(b, 0x12, (const char *)scratch->data, scratch->len) < 0) {
        return -1;
    }
    return 0;
}

/* state for the module */
static PyObject *SIXTY_FOUR;  /* the int 64 */
static PyObject *STR_STOIC;   /* "stoic" */
static PyObject *STR_R;       /* "r" */
static PyObject *STR_W;       /* "w" */

static int put_ids(Buf *b, PyObject *trace_id, uint64_t span_id, uint64_t parent_id) {
    if (!PyLong_Check(trace_id)) {
        return 1;
    }
    unsigned long long low = PyLong_AsUnsignedLongLongMask(trace_id);
    if (low == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 1;
    }
    PyObject *high_obj = PyNumber_Rshift(trace_id, SIXTY_FOUR);
    if (high_obj == NULL) {
        PyErr_Clear();
        return 1;
    }
    uint64_t high;
    int r = as_u64(high_obj, &high);
    Py_DECREF(high_obj);
    if (r != 0) {
        return 1;
    }
    unsigned char head[2] = {0x0a, 0x10};
    if (put(b, head, 2) < 0 || put_be64(b, high) < 0 || put_be64(b, (uint64_t)low) < 0) {
        return -1;
    }
    unsigned char t2[2] = {0x12, 0x08};
    if (put(b, t2, 2) < 0 || put_be64(b, span_id) < 0) {
        return -1;
    }
    if (parent_id) {
        unsigned char t4[2] = {0x22, 0x08};
        if (put(b, t4, 2) < 0 || put_be64(b, parent_id) < 0) {
            return -1;
        }
    }
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
    if (put_field(b, 0x2a, n, nn) < 0) {
        return -1;
    }
    unsigned char k[2] = {0x30, (unsigned char)((kind >= 0 && kind < 5) ? kind + 1 : 0)};
    if (put(b, k, 2) < 0) {
        return -1;
    }
    if (code == 0 && dn == 0) {
        unsigned char empty[2] = {0x7a, 0x00};
        if (put(b, empty, 2) < 0) {
            return -1;
        }
    } else {
        uint64_t body = 0;
        if (dn) {
            body += 1 + (uint64_t)varint_size((uint64_t)dn) + (uint64_t)dn;
        }
        int has_code = code > 0 && code < 3;
        if (has_code) {
            body += 2;
        }
        if (put_byte(b, 0x7a) < 0 || put_varint(b, body) < 0) {
            return -1;
        }
        if (dn && put_field(b, 0x12, d, dn) < 0) {
            return -1;
        }
        if (has_code) {
            unsigned char c[2] = {0x18, (unsigned char)code};
            if (put(b, c, 2) < 0) {
                return -1;
            }
        }
    }
    unsigned char flags[6] = {0x85, 0x01, 0x00, (unsigned char)(remote ? 0x03 : 0x01), 0x00,
                              0x00};
    return put(b, flags, 6);
}

static int put_times(Buf *b, uint64_t start, uint64_t end) {
    if (put_byte(b, 0x39) < 0 || put_le64(b, start) < 0 || put_byte(b, 0x41) < 0) {
        return -1;
    }
    return put_le64(b, end ? end : start);
}

/* What every span starts with, in the Python encoder's order: ids (1, 2, 4), name,
 * kind, status and flags (5, 6, 15, 16), times (7, 8). 0, 1 (not taken) or -1. */
static int span_head(Buf *b, PyObject *trace_id, uint64_t span_id, uint64_t parent_id,
                     PyObject *name, long kind, long code, PyObject *description, int remote,
                     uint64_t start, uint64_t end) {
    int r = put_ids(b, trace_id, span_id, parent_id);
    if (r == 0) {
        r = put_fixed(b, name, kind, code, description, remote);
    }
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

/* A 16-tuple span item. 0: written; 1: not taken; -1: error. */
static int span(Buf *b, Buf *scratch, PyObject *item) {
    uint64_t span_id, parent_id, start, end;
    long kind, code;
    PyObject *trace_id = PyTuple_GET_ITEM(item, 1);
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
    int remote = parent_id != 0 && PyObject_IsTrue(PyTuple_GET_ITEM(item, 5)) == 1;
    PyErr_Clear();
    int r = span_head(b, trace_id, span_id, parent_id, PyTuple_GET_ITEM(item, 0), kind, code,
                      PyTuple_GET_ITEM(item, 13), remote, start, end);
    if (r != 0) {
        return r;
    }
    if (attributes != Py_None) {
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        while (PyDict_Next(attributes, &pos, &key, &value)) {
            r = attribute(b, scratch, key, value);
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
static int compact_attributes(Buf *b, Buf *scratch, PyObject *inv, PyObject *function,
                              PyObject *attempt, PyObject *last_key, PyObject *last) {
    int r;
    if ((r = attribute(b, scratch, K_INV, inv)) != 0 ||
        (r = attribute(b, scratch, K_FUNCTION, function)) != 0 ||
        (r = attribute(b, scratch, K_ATTEMPT, attempt)) != 0 ||
        (r = attribute(b, scratch, last_key, last)) != 0) {
        return r;
    }
    return 0;
}

/* ("r", trace_id, span_id, state, parent_id, start, end, function, inv, attempt, target,
 * resource) */
static int route(Buf *b, Buf *scratch, PyObject *item) {
    uint64_t span_id, parent_id, start, end;
    if (!empty_str(PyTuple_GET_ITEM(item, 3)) || item_u64(item, 2, &span_id) ||
        item_u64(item, 4, &parent_id) || item_u64(item, 5, &start) ||
        item_u64(item, 6, &end) || parent_id == 0) {
        return 1;
    }
    int r = span_head(b, PyTuple_GET_ITEM(item, 1), span_id, parent_id, S_ROUTE, 0, 0, S_EMPTY,
                      0, start, end);
    if (r != 0) {
        return r;
    }
    return compact_attributes(b, scratch, PyTuple_GET_ITEM(item, 8), PyTuple_GET_ITEM(item, 7),
                              PyTuple_GET_ITEM(item, 9), K_TARGET, PyTuple_GET_ITEM(item, 10));
}

/* ("w", trace_id, execute_id, state, parent_id, handler_id, execute_start, handler_start,
 * handler_end, execute_end, function, inv, attempt, pid, error, resource, scope):
 * two spans, into `b` and `b2`. */
static int worker(Buf *b, Buf *b2, Buf *scratch, PyObject *item) {
    uint64_t execute_id, parent_id, handler_id, es, hs, he, ee;
    PyObject *error = PyTuple_GET_ITEM(item, 14);
    if (!empty_str(PyTuple_GET_ITEM(item, 3)) || item_u64(item, 2, &execute_id) ||
        item_u64(item, 4, &parent_id) || item_u64(item, 5, &handler_id) ||
        item_u64(item, 6, &es) || item_u64(item, 7, &hs) || item_u64(item, 8, &he) ||
        item_u64(item, 9, &ee) || parent_id == 0 || execute_id == 0 ||
        !PyUnicode_Check(error)) {
        return 1;
    }
    PyObject *trace_id = PyTuple_GET_ITEM(item, 1);
    int r = span_head(b, trace_id, execute_id, parent_id, S_EXECUTE, 1, 0, S_EMPTY, 0, es, ee);
    if (r != 0) {
        return r;
    }
    Py_ssize_t attrs_at = b->len;
    r = compact_attributes(b, scratch, PyTuple_GET_ITEM(item, 11), PyTuple_GET_ITEM(item, 10),
                           PyTuple_GET_ITEM(item, 12), K_PID, PyTuple_GET_ITEM(item, 13));
    if (r != 0) {
        return r;
    }
    int failed = PyUnicode_GET_LENGTH(error) != 0;
    r = span_head(b2, trace_id, handler_id, execute_id, S_HANDLER, 0, failed ? 2 : 0, error, 0,
                  hs, he);
    if (r != 0) {
        return r;
    }
    return put(b2, b->data + attrs_at, b->len - attrs_at);
}

/* The list groups[key], made if missing (a borrowed reference). */
static PyObject *group_for(PyObject *groups, PyObject *key) {
    PyObject *group = PyDict_GetItemWithError(groups, key);
    if (group == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        group = PyList_New(0);
        if (group == NULL) {
            return NULL;
        }
        int r = PyDict_SetItem(groups, key, group);
        Py_DECREF(group);  /* the dict holds it */
        if (r < 0) {
            return NULL;
        }
    }
    if (!PyList_Check(group)) {
        PyErr_SetString(PyExc_TypeError, "a group is not a list");
        return NULL;
    }
    return group;
}

/* Append tag, length and `b` to `group` as one bytes object. */
static int emit(PyObject *group, Buf *b) {
    unsigned char head[11];
    Py_ssize_t hn = 1;
    uint64_t v = (uint64_t)b->len;
    head[0] = 0x12;
    while (v >= 0x80) {
        head[hn++] = (unsigned char)((v & 0x7F) | 0x80);
        v >>= 7;
    }
    head[hn++] = (unsigned char)v;
    PyObject *bytes = PyBytes_FromStringAndSize(NULL, hn + b->len);
    if (bytes == NULL) {
        return -1;
    }
    char *out = PyBytes_AS_STRING(bytes);
    memcpy(out, head, (size_t)hn);
    memcpy(out + hn, b->data, (size_t)b->len);
    int rc = PyList_Append(group, bytes);
    Py_DECREF(bytes);
    return rc;
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
    Buf b = {0}, b2 = {0}, scratch = {0};
    long count = 0;
    /* the last group used, and its key's parts (items of one batch mostly share them) */
    PyObject *last_res = NULL, *last_scope = NULL, *last_group = NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **all = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = all[i];
        int r = 1;
        PyObject *res = NULL, *scope = NULL;
        b.len = 0;
        b2.len = 0;
        if (PyTuple_CheckExact(item)) {
            Py_ssize_t size = PyTuple_GET_SIZE(item);
            if (size == 16) {
                r = span(&b, &scratch, item);
                res = PyTuple_GET_ITEM(item, 14);
                scope = PyTuple_GET_ITEM(item, 15);
            } else if (size == 12 && PyUnicode_Check(PyTuple_GET_ITEM(item, 0)) &&
                       PyUnicode_Compare(PyTuple_GET_ITEM(item, 0), STR_R) == 0) {
                r = route(&b, &scratch, item);
                res = PyTuple_GET_ITEM(item, 11);
                scope = STR_STOIC;
            } else if (size == 17 && PyUnicode_Check(PyTuple_GET_ITEM(item, 0)) &&
                       PyUnicode_Compare(PyTuple_GET_ITEM(item, 0), STR_W) == 0) {
                r = worker(&b, &b2, &scratch, item);
                res = PyTuple_GET_ITEM(item, 15);
                scope = PyTuple_GET_ITEM(item, 16);
            }
        }
        if (r < 0) {
            goto fail;
        }
        if (r == 1) {
            PyErr_Clear();
            if (PyList_Append(rest, item) < 0) {
                goto fail;
            }
            continue;
        }
        PyObject *group = NULL;
        if (last_group != NULL) {
            int same_res = PyObject_RichCompareBool(res, last_res, Py_EQ);
            int same_scope = same_res == 1 ? PyObject_RichCompareBool(scope, last_scope, Py_EQ)
                                           : 0;
            if (same_res < 0 || same_scope < 0) {
                goto fail;
            }
            if (same_res == 1 && same_scope == 1) {
                group = last_group;
            }
        }
        if (group == NULL) {
            PyObject *key = PyTuple_Pack(2, res, scope);
            if (key == NULL) {
                goto fail;
            }
            group = group_for(groups, key);
            Py_DECREF(key);
            if (group == NULL) {
                goto fail;
            }
            last_res = res;
            last_scope = scope;
            last_group = group;  /* borrowed: the dict holds it for the whole call */
        }
        if (emit(group, &b) < 0) {
            goto fail;
        }
        count++;
        if (b2.len) {
            if (emit(group, &b2) < 0) {
                goto fail;
            }
            count++;
        }
    }
    PyMem_Free(b.data);
    PyMem_Free(b2.data);
    PyMem_Free(scratch.data);
    Py_DECREF(seq);
    return Py_BuildValue("(lN)", count, rest);
fail:
    PyMem_Free(b.data);
    PyMem_Free(b2.data);
    PyMem_Free(scratch.data);
    Py_DECREF(seq);
    Py_DECREF(rest);
    return NULL;
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
    SIXTY_FOUR = PyLong_FromLong(64);
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
    if (!SIXTY_FOUR || !STR_STOIC || !STR_R || !STR_W || !S_ROUTE || !S_EXECUTE ||
        !S_HANDLER || !S_EMPTY || !K_INV || !K_FUNCTION || !K_ATTEMPT || !K_TARGET || !K_PID) {
        return NULL;
    }
    return PyModule_Create(&module);
}
