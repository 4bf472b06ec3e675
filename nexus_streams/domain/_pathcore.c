/* The search of algorithms.find_path in C: the same bidirectional BFS, on the same structures.
 *
 * Why: on a near pair the pure-Python search does the same work as networkx's, so it cannot
 * be much faster than it; here one call costs about a tenth of that. algorithms.py keeps the
 * Python version as the reference and the fallback (no compiler, or NEXUS_STREAMS_PURE_PYTHON),
 * and tests/unit/test_pathcore.py checks that both give the same answers and the same errors.
 *
 * find_path(tables, source, target, max_depth, out_mask, in_mask, visit_limit) reads
 * GraphIndex.tables: (ids dict, names list, out-arrays list, in-arrays list), each array an
 * array('q') of neighbour * 8 + type code, read through the buffer protocol, or None. The masks
 * have bit c set for each type code c followed on the out-arrays / in-arrays. It answers a Path
 * or None, or raises what the configured over_limit callback raises. No Python code runs
 * during the search, and no array is held across a call into Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* -------------------------------------------------------------- configuration (configure) */

static PyTypeObject *path_type;   /* algorithms.Path */
static PyObject *path_entities;   /* its slot descriptors */
static PyObject *path_relationships;
static PyTypeObject *key_type;    /* relationships.RelationshipKey */
static PyObject *key_source;
static PyObject *key_kind;
static PyObject *key_target;
static PyObject *types_by_code;   /* tuple: RelationType by code */
static PyObject *over_limit;      /* over_limit(visit_limit, visited): raises ResourceLimit */

static PyObject *
slot_descriptor(PyObject *cls, const char *name)
{
    PyObject *dict = PyObject_GetAttrString(cls, "__dict__");
    if (dict == NULL)
        return NULL;
    PyObject *descr = PyMapping_GetItemString(dict, name);
    Py_DECREF(dict);
    if (descr != NULL && Py_TYPE(descr)->tp_descr_set == NULL) {
        PyErr_Format(PyExc_TypeError, "%s is not a slot", name);
        Py_CLEAR(descr);
    }
    return descr;
}

static void
set_config(PyObject **field, PyObject *value)
{
    Py_XSETREF(*field, value);
}

static PyObject *
configure(PyObject *module, PyObject *args)
{
    PyObject *path_cls, *key_cls, *types, *callback;
    if (!PyArg_ParseTuple(args, "O!O!O!O:configure", &PyType_Type, &path_cls, &PyType_Type, &key_cls,
                          &PyTuple_Type, &types, &callback))
        return NULL;
    if (PyTuple_GET_SIZE(types) < 4) {
        PyErr_SetString(PyExc_ValueError, "types must name codes 0 to 3");
        return NULL;
    }
    PyObject *fields[5] = {
        slot_descriptor(path_cls, "entities"), slot_descriptor(path_cls, "relationships"),
        slot_descriptor(key_cls, "source"), slot_descriptor(key_cls, "type"),
        slot_descriptor(key_cls, "target"),
    };
    for (int i = 0; i < 5; i++) {
        if (fields[i] == NULL) {
            for (int j = 0; j < 5; j++)
                Py_XDECREF(fields[j]);
            return NULL;
        }
    }
    set_config(&path_entities, fields[0]);
    set_config(&path_relationships, fields[1]);
    set_config(&key_source, fields[2]);
    set_config(&key_kind, fields[3]);
    set_config(&key_target, fields[4]);
    set_config((PyObject **)&path_type, Py_NewRef(path_cls));
    set_config((PyObject **)&key_type, Py_NewRef(key_cls));
    set_config(&types_by_code, Py_NewRef(types));
    set_config(&over_limit, Py_NewRef(callback));
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------ scratch memory */

/* node -> (side, predecessor) of both searches; a slot is empty unless its gen is the call's:
 * a new call empties the table by taking the next generation, without touching it */
typedef struct {
    int64_t node;
    int64_t pred;
    uint32_t gen;
    int32_t side;
} Slot;

typedef struct {
    Slot *slots;
    size_t mask;
    size_t used;
    uint32_t gen;
} Table;

typedef struct {
    int64_t *items;
    Py_ssize_t len;
    Py_ssize_t cap;
} Vec;

enum { FORWARD = 0, BACKWARD = 1 };

/* kept between calls while small: most searches fit */
#define KEPT_SLOTS 4096
#define KEPT_ITEMS 4096

typedef struct {
    Table table;
    Vec front[2];
    Vec next;
    Vec nodes;
} Scratch;

static Slot kept_slots[KEPT_SLOTS];
static uint32_t kept_gen;
static Scratch kept;
/* a search that starts while another one runs (a finalizer run by an allocation of the
 * result could call find_path) gets scratch of its own */
static int kept_busy;

static inline size_t
slot_of(const Table *table, int64_t node)
{
    return (size_t)(((uint64_t)node * 0x9E3779B97F4A7C15ULL) >> 17) & table->mask;
}

/* the slot of `node`, or the empty slot where it goes */
static inline Slot *
probe(const Table *table, int64_t node)
{
    size_t i = slot_of(table, node);
    for (;;) {
        Slot *slot = &table->slots[i];
        if (slot->gen != table->gen || slot->node == node)
            return slot;
        i = (i + 1) & table->mask;
    }
}

static int
grow_table(Table *table)
{
    size_t size = (table->mask + 1) * 4;
    Slot *slots = PyMem_Calloc(size, sizeof(Slot));
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Table bigger = {slots, size - 1, table->used, 1};
    for (size_t i = 0; i <= table->mask; i++) {
        const Slot *old = &table->slots[i];
        if (old->gen == table->gen) {
            Slot *slot = probe(&bigger, old->node);
            *slot = *old;
            slot->gen = 1;
        }
    }
    if (table->slots != kept_slots)
        PyMem_Free(table->slots);
    *table = bigger;
    return 0;
}

/* records `node` on `side` after `probe` found it absent at `slot` */
static inline int
record(Table *table, Slot *slot, int64_t node, int side, int64_t pred)
{
    slot->node = node;
    slot->pred = pred;
    slot->gen = table->gen;
    slot->side = side;
    if (++table->used * 2 > table->mask + 1)
        return grow_table(table);
    return 0;
}

static int
push(Vec *vec, int64_t item)
{
    if (vec->len == vec->cap) {
        Py_ssize_t cap = vec->cap ? vec->cap * 2 : 64;
        int64_t *items = PyMem_Realloc(vec->items, (size_t)cap * sizeof(int64_t));
        if (items == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        vec->items = items;
        vec->cap = cap;
    }
    vec->items[vec->len++] = item;
    return 0;
}

static void
trim(Vec *vec, Py_ssize_t keep)
{
    vec->len = 0;
    if (vec->cap > keep) {
        PyMem_Free(vec->items);
        vec->items = NULL;
        vec->cap = 0;
    }
}

static Scratch *
take_scratch(Scratch *own)
{
    if (kept_busy) {
        memset(own, 0, sizeof(*own));
        own->table.slots = PyMem_Calloc(64, sizeof(Slot));
        if (own->table.slots == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        own->table.mask = 63;
        own->table.gen = 1;
        return own;
    }
    kept_busy = 1;
    if (++kept_gen == 0) {
        memset(kept_slots, 0, sizeof(kept_slots));
        kept_gen = 1;
    }
    kept.table = (Table){kept_slots, KEPT_SLOTS - 1, 0, kept_gen};
    kept.front[0].len = kept.front[1].len = kept.next.len = kept.nodes.len = 0;
    return &kept;
}

static void
give_back(Scratch *scratch)
{
    if (scratch->table.slots != kept_slots)
        PyMem_Free(scratch->table.slots);
    if (scratch == &kept) {
        trim(&kept.front[0], KEPT_ITEMS);
        trim(&kept.front[1], KEPT_ITEMS);
        trim(&kept.next, KEPT_ITEMS);
        trim(&kept.nodes, KEPT_ITEMS);
        kept_busy = 0;
        return;
    }
    trim(&scratch->front[0], 0);
    trim(&scratch->front[1], 0);
    trim(&scratch->next, 0);
    trim(&scratch->nodes, 0);
}

/* ----------------------------------------------------------------------- the adjacency */

/* Arrays of one node: 1 with `view` filled (release it), 0 for None, -1 on error. */
static int
entries_of(PyObject *arrays, int64_t node, Py_buffer *view)
{
    if (node < 0 || node >= PyList_GET_SIZE(arrays)) {
        PyErr_Format(PyExc_IndexError, "node %lld is not in the index", (long long)node);
        return -1;
    }
    PyObject *entries = PyList_GET_ITEM(arrays, node);
    if (entries == Py_None)
        return 0;
    if (PyObject_GetBuffer(entries, view, PyBUF_FORMAT) < 0)
        return -1;
    if (view->itemsize != 8 || view->format == NULL || strcmp(view->format, "q") != 0) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_TypeError, "adjacency entries must be array('q')");
        return -1;
    }
    return 1;
}

typedef struct {
    PyObject *arrays; /* list of array('q') or None, by node */
    unsigned mask;    /* bit c: follow type code c */
} Side;

typedef struct {
    Scratch *scratch;
    PyObject *names;
    Side sides[2][2]; /* per search (FORWARD, BACKWARD): the arrays it reads */
    int n_sides;
    Py_ssize_t count[2]; /* nodes recorded per search */
    long long visit_limit;
    /* where the searches met: node, and its predecessor on the search that found it */
    int64_t meet;
    int64_t meet_pred;
    int meet_side;
    long long visited; /* over the limit: the figure to report */
} Search;

enum { NO_MEET = 0, MET = 1, FAILED = -1, OVER_LIMIT = -2 };

/* Reading arrays costs three dependent cache misses each on a big index (the list's slot,
 * the array object, its items), and a near pair reads only a few dozen entries: the misses
 * are most of the time. So arrays are read a chunk of nodes at a time, each step of the chain
 * prefetched for the whole chunk before it is followed: the misses of a chunk overlap. */
#define CHUNK 8

typedef struct {
    const int64_t *items;
    Py_ssize_t n;
    Py_buffer view;
    int held;
} Entries;

static inline void
prefetch(const void *at)
{
#if defined(__GNUC__) || defined(__clang__)
    __builtin_prefetch(at);
#else
    (void)at;
#endif
}

static void
release_all(Entries *entries, int count)
{
    for (int i = 0; i < count; i++) {
        if (entries[i].held) {
            PyBuffer_Release(&entries[i].view);
            entries[i].held = 0;
        }
    }
}

/* entries[k * n_lists + j]: the array of nodes[k] in lists[j] (n == 0 for None), for
 * k < count <= CHUNK; held until release_all. 0, or -1 on error (nothing held). */
static int
load(PyObject *const *lists, int n_lists, const int64_t *nodes, int count, Entries *entries)
{
    for (int k = 0; k < count; k++) {
        for (int j = 0; j < n_lists; j++) {
            if (nodes[k] < 0 || nodes[k] >= PyList_GET_SIZE(lists[j])) {
                PyErr_Format(PyExc_IndexError, "node %lld is not in the index", (long long)nodes[k]);
                return -1;
            }
            prefetch(&((PyListObject *)lists[j])->ob_item[nodes[k]]);
        }
    }
    for (int k = 0; k < count; k++)
        for (int j = 0; j < n_lists; j++)
            prefetch(PyList_GET_ITEM(lists[j], nodes[k]));
    for (int k = 0; k < count; k++) {
        for (int j = 0; j < n_lists; j++) {
            Entries *e = &entries[k * n_lists + j];
            int got = entries_of(lists[j], nodes[k], &e->view);
            if (got < 0) {
                release_all(entries, k * n_lists + j);
                return -1;
            }
            e->held = got;
            e->n = got ? e->view.len / 8 : 0;
            e->items = got ? e->view.buf : NULL;
            if (got)
                prefetch(e->items);
        }
    }
    return 0;
}

/* The first nodes of the next level: their list slots (names too, for the path) are
 * prefetched as they are found, a step of their chain early. */
#define PREFETCH_NEXT 64

static inline void
prefetch_node(const Search *search, PyObject *const *lists, int n_lists, int64_t node)
{
    for (int j = 0; j < n_lists; j++)
        if (node < PyList_GET_SIZE(lists[j]))
            prefetch(&((PyListObject *)lists[j])->ob_item[node]);
    if (node < PyList_GET_SIZE(search->names))
        prefetch(&((PyListObject *)search->names)->ob_item[node]);
}

/* One BFS level of search `side` (algorithms._expand): records what it reaches, fills
 * scratch->next, stops at the first node of the other search. */
static int
expand(Search *search, int side)
{
    Scratch *scratch = search->scratch;
    Table *table = &scratch->table;
    const Vec *frontier = &scratch->front[side];
    Vec *next = &scratch->next;
    const int n_sides = search->n_sides;
    PyObject *lists[2] = {search->sides[side][0].arrays, search->sides[side][1].arrays};
    const unsigned masks[2] = {search->sides[side][0].mask, search->sides[side][1].mask};
    Entries chunk[CHUNK * 2];
    next->len = 0;
    for (Py_ssize_t i = 0; i < frontier->len; i += CHUNK) {
        int count = frontier->len - i < CHUNK ? (int)(frontier->len - i) : CHUNK;
        if (load(lists, n_sides, &frontier->items[i], count, chunk) < 0)
            return FAILED;
        for (int k = 0; k < count; k++) {
            int64_t u = frontier->items[i + k];
            for (int j = 0; j < n_sides; j++) {
                const Entries *e = &chunk[k * n_sides + j];
                const unsigned mask = masks[j];
                for (Py_ssize_t x = 0; x < e->n; x++) {
                    int64_t p = e->items[x];
                    if (!(mask >> (p & 7) & 1))
                        continue;
                    int64_t v = p >> 3;
                    Slot *slot = probe(table, v);
                    if (slot->gen == table->gen) {
                        if (slot->side != side) {
                            release_all(chunk, count * n_sides);
                            search->meet = v;
                            search->meet_pred = u;
                            search->meet_side = side;
                            return MET;
                        }
                        continue;
                    }
                    if (record(table, slot, v, side, u) < 0 || push(next, v) < 0) {
                        release_all(chunk, count * n_sides);
                        return FAILED;
                    }
                    search->count[side]++;
                    if (next->len <= PREFETCH_NEXT)
                        prefetch_node(search, lists, n_sides, v);
                }
            }
            long long visited = (long long)search->count[side] + search->count[!side];
            if (visited > search->visit_limit) {
                release_all(chunk, count * n_sides);
                search->visited = visited;
                return OVER_LIMIT;
            }
        }
        release_all(chunk, count * n_sides);
    }
    return NO_MEET;
}

/* The last level (algorithms._meet): looks for a node of the other search without recording
 * anything; once the entries read could have passed the visit limit, `expand` redoes it. */
static int
meet_level(Search *search, int side)
{
    Scratch *scratch = search->scratch;
    const Table *table = &scratch->table;
    const Vec *frontier = &scratch->front[side];
    const int n_sides = search->n_sides;
    PyObject *lists[2] = {search->sides[side][0].arrays, search->sides[side][1].arrays};
    const unsigned masks[2] = {search->sides[side][0].mask, search->sides[side][1].mask};
    Entries chunk[CHUNK * 2];
    long long room = search->visit_limit - search->count[0] - search->count[1];
    long long read = 0;
    for (Py_ssize_t i = 0; i < frontier->len; i += CHUNK) {
        int count = frontier->len - i < CHUNK ? (int)(frontier->len - i) : CHUNK;
        if (load(lists, n_sides, &frontier->items[i], count, chunk) < 0)
            return FAILED;
        for (int k = 0; k < count; k++) {
            for (int j = 0; j < n_sides; j++) {
                const Entries *e = &chunk[k * n_sides + j];
                const unsigned mask = masks[j];
                read += e->n;
                for (Py_ssize_t x = 0; x < e->n; x++) {
                    int64_t p = e->items[x];
                    if (!(mask >> (p & 7) & 1))
                        continue;
                    const Slot *slot = probe(table, p >> 3);
                    if (slot->gen == table->gen && slot->side != side) {
                        release_all(chunk, count * n_sides);
                        search->meet = p >> 3;
                        search->meet_pred = frontier->items[i + k];
                        search->meet_side = side;
                        return MET;
                    }
                }
            }
            if (read > room) {
                release_all(chunk, count * n_sides);
                return expand(search, side);
            }
        }
        release_all(chunk, count * n_sides);
    }
    return NO_MEET;
}

/* Brings the arrays and names of `nodes` into the cache, their misses overlapping: the ends
 * of a search before it starts, the nodes of a path before its relationships are read. */
static int
warm(PyObject *names, PyObject *outs, PyObject *ins, const int64_t *nodes, Py_ssize_t n)
{
    PyObject *lists[2] = {outs, ins};
    Entries chunk[CHUNK * 2];
    const Py_ssize_t n_names = PyList_GET_SIZE(names);
    for (Py_ssize_t i = 0; i < n; i += CHUNK) {
        int count = n - i < CHUNK ? (int)(n - i) : CHUNK;
        for (int k = 0; k < count; k++)
            if (nodes[i + k] >= 0 && nodes[i + k] < n_names)
                prefetch(&((PyListObject *)names)->ob_item[nodes[i + k]]);
        if (load(lists, 2, &nodes[i], count, chunk) < 0)
            return -1;
        for (int k = 0; k < count; k++)
            if (nodes[i + k] >= 0 && nodes[i + k] < n_names)
                prefetch(PyList_GET_ITEM(names, nodes[i + k]));
        release_all(chunk, count * 2);
    }
    return 0;
}

/* Bidirectional BFS from s and t (both known, s != t, max_depth >= 1): MET, NO_MEET, FAILED
 * or OVER_LIMIT. The first level expands the source: the same as algorithms.find_path's
 * inlined first level. */
static int
bfs(Search *search, int64_t s, int64_t t, long long max_depth)
{
    Scratch *scratch = search->scratch;
    Table *table = &scratch->table;
    if (record(table, probe(table, s), s, FORWARD, -1) < 0 ||
        record(table, probe(table, t), t, BACKWARD, -1) < 0 ||
        push(&scratch->front[FORWARD], s) < 0 || push(&scratch->front[BACKWARD], t) < 0)
        return FAILED;
    search->count[FORWARD] = search->count[BACKWARD] = 1;
    for (long long depth = 1; depth <= max_depth; depth++) {
        if (scratch->front[FORWARD].len == 0)
            return NO_MEET;
        int side = scratch->front[FORWARD].len <= scratch->front[BACKWARD].len ? FORWARD : BACKWARD;
        int found;
        if (depth == max_depth) {
            found = meet_level(search, side);
        }
        else {
            found = expand(search, side);
            Vec swap = scratch->front[side];
            scratch->front[side] = scratch->next;
            scratch->next = swap;
        }
        if (found != NO_MEET)
            return found;
        if (scratch->front[BACKWARD].len == 0)
            return NO_MEET;
    }
    return NO_MEET;
}

/* The predecessor of `node` on `side`, as the search recorded it. */
static int64_t
pred_of(const Search *search, int64_t node, int side)
{
    if (node == search->meet && side == search->meet_side)
        return search->meet_pred;
    const Slot *slot = probe(&search->scratch->table, node);
    return slot->pred;
}

/* scratch->nodes: source ... meet ... target; returns the position of the meeting node */
static Py_ssize_t
path_nodes(Search *search)
{
    Vec *nodes = &search->scratch->nodes;
    nodes->len = 0;
    for (int64_t node = search->meet; node >= 0; node = pred_of(search, node, FORWARD))
        if (push(nodes, node) < 0)
            return -1;
    Py_ssize_t meet_at = nodes->len - 1;
    for (Py_ssize_t i = 0, j = nodes->len - 1; i < j; i++, j--) {
        int64_t swap = nodes->items[i];
        nodes->items[i] = nodes->items[j];
        nodes->items[j] = swap;
    }
    for (int64_t node = pred_of(search, search->meet, BACKWARD); node >= 0;
         node = pred_of(search, node, BACKWARD))
        if (push(nodes, node) < 0)
            return -1;
    return meet_at;
}

/* --------------------------------------------------------------------------- the answer */

static inline int
set_slot(PyObject *descr, PyObject *obj, PyObject *value)
{
    return Py_TYPE(descr)->tp_descr_set(descr, obj, value);
}

/* Path(entities, relationships) without its __init__, as algorithms._new_path; steals both */
static PyObject *
new_path(PyObject *entities, PyObject *relationships)
{
    PyObject *path = entities && relationships ? path_type->tp_alloc(path_type, 0) : NULL;
    if (path == NULL || set_slot(path_entities, path, entities) < 0 ||
        set_slot(path_relationships, path, relationships) < 0)
        Py_CLEAR(path);
    Py_XDECREF(entities);
    Py_XDECREF(relationships);
    return path;
}

/* relationships.make_key */
static PyObject *
new_key(PyObject *source, int code, PyObject *target)
{
    PyObject *key = key_type->tp_alloc(key_type, 0);
    if (key == NULL || set_slot(key_source, key, source) < 0 ||
        set_slot(key_kind, key, PyTuple_GET_ITEM(types_by_code, code)) < 0 ||
        set_slot(key_target, key, target) < 0)
        Py_CLEAR(key);
    return key;
}

/* Bit c set: the array of `node` in `arrays` holds other * 8 + c. Reads that array, which the
 * search has just read (no cache miss), unless it is long: then the shorter of it and the
 * mirror (the array of `other` in `mirror`, holding node * 8 + c), as algorithms._first_stored.
 * -1 on error. */
static int
codes_towards(PyObject *arrays, PyObject *mirror, int64_t node, int64_t other)
{
    Py_buffer view, mirror_view;
    int got = entries_of(arrays, node, &view);
    if (got <= 0)
        return got;
    const Py_buffer *scan = &view;
    int64_t wanted = other;
    int mirrored = 0;
    if (view.len > 256 * 8) {
        mirrored = entries_of(mirror, other, &mirror_view);
        if (mirrored < 0) {
            PyBuffer_Release(&view);
            return -1;
        }
        if (mirrored == 0) { /* the relationship would be in both arrays: none */
            PyBuffer_Release(&view);
            return 0;
        }
        if (mirror_view.len < view.len) {
            scan = &mirror_view;
            wanted = node;
        }
    }
    const int64_t *items = scan->buf;
    unsigned present = 0;
    for (Py_ssize_t i = 0, n = scan->len / 8; i < n; i++)
        if (items[i] >> 3 == wanted)
            present |= 1u << (items[i] & 7);
    PyBuffer_Release(&view);
    if (mirrored)
        PyBuffer_Release(&mirror_view);
    return (int)present;
}

static inline int
first_code(unsigned present, unsigned mask)
{
    present &= mask & 0xF; /* the codes stored, in the order paths prefer them */
    for (int code = 0; code < 4; code++)
        if (present >> code & 1)
            return code;
    return -1;
}

/* The canonical relationship of each step a -> b (algorithms._path), as codes: 0-3 when
 * stored a -> b (in a's out-array, with the lowest code of out_mask), else 8-11 when stored
 * b -> a (in a's in-array, with the lowest code of in_mask). Each step is read on the node the
 * search expanded to take it, whose arrays are in the cache: a up to the meeting node, b after. */
static int
step_codes(const Search *search, Py_ssize_t meet_at, PyObject *outs, PyObject *ins,
           unsigned out_mask, unsigned in_mask, int *codes)
{
    const Vec *nodes = &search->scratch->nodes;
    for (Py_ssize_t i = 1; i < nodes->len; i++) {
        int64_t a = nodes->items[i - 1], b = nodes->items[i];
        int from_a = i <= meet_at;
        int code = -1;
        if (out_mask & 0xF) {
            int present = from_a ? codes_towards(outs, ins, a, b) : codes_towards(ins, outs, b, a);
            if (present < 0)
                return -1;
            code = first_code((unsigned)present, out_mask);
        }
        if (code < 0 && in_mask & 0xF) {
            int present = from_a ? codes_towards(ins, outs, a, b) : codes_towards(outs, ins, b, a);
            if (present < 0)
                return -1;
            code = first_code((unsigned)present, in_mask);
            if (code >= 0)
                code += 8;
        }
        if (code < 0) {
            PyErr_Format(PyExc_SystemError, "no step from node %lld to node %lld", (long long)a,
                         (long long)b);
            return -1;
        }
        codes[i - 1] = code;
    }
    return 0;
}

static PyObject *
name_of(PyObject *names, int64_t node)
{
    if (node < 0 || node >= PyList_GET_SIZE(names)) {
        PyErr_Format(PyExc_IndexError, "node %lld has no name", (long long)node);
        return NULL;
    }
    return PyList_GET_ITEM(names, node);
}

/* The Path of `nodes` with the relationships of `codes`; copies both first: building objects
 * can run Python code (a finalizer), which could start a search on the scratch. */
static PyObject *
build_path(PyObject *names, const int64_t *nodes, const int *codes, Py_ssize_t n)
{
    PyObject *entities = PyList_New(n);
    PyObject *keys = PyList_New(n - 1);
    if (entities == NULL || keys == NULL)
        goto error;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = name_of(names, nodes[i]);
        if (name == NULL)
            goto error;
        PyList_SET_ITEM(entities, i, Py_NewRef(name));
    }
    for (Py_ssize_t i = 1; i < n; i++) {
        PyObject *a = PyList_GET_ITEM(entities, i - 1), *b = PyList_GET_ITEM(entities, i);
        int code = codes[i - 1];
        PyObject *key = code < 8 ? new_key(a, code, b) : new_key(b, code - 8, a);
        if (key == NULL)
            goto error;
        PyList_SET_ITEM(keys, i - 1, key);
    }
    return new_path(entities, keys);
error:
    Py_XDECREF(entities);
    Py_XDECREF(keys);
    return NULL;
}

/* ------------------------------------------------------------------------------ find_path */

static int
as_node(PyObject *value, int64_t *node)
{
    long long n = PyLong_AsLongLong(value);
    if (n == -1 && PyErr_Occurred())
        return -1;
    *node = n;
    return 0;
}

/* an int, clamped to +-2**62 (no overflow in the arithmetic on it) */
static int
as_bound(PyObject *value, long long *bound)
{
    int overflow;
    long long n = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (n == -1 && PyErr_Occurred())
        return -1;
    const long long most = (long long)1 << 62;
    if (overflow > 0 || n > most)
        n = most;
    else if (overflow < 0 || n < -most)
        n = -most;
    *bound = n;
    return 0;
}

static int
as_mask(PyObject *value, unsigned *mask)
{
    long n = PyLong_AsLong(value);
    if (n == -1 && PyErr_Occurred())
        return -1;
    *mask = (unsigned)n & 0xFF;
    return 0;
}

#define SMALL_PATH 16

static PyObject *
answer(Search *search, PyObject *names, PyObject *outs, PyObject *ins, unsigned out_mask,
       unsigned in_mask)
{
    Py_ssize_t meet_at = path_nodes(search);
    if (meet_at < 0)
        return NULL;
    Py_ssize_t n = search->scratch->nodes.len;
    const int64_t *order = search->scratch->nodes.items;
    const Py_ssize_t n_names = PyList_GET_SIZE(names);
    for (Py_ssize_t i = 0; i < n; i++)
        if (order[i] >= 0 && order[i] < n_names)
            prefetch(&((PyListObject *)names)->ob_item[order[i]]);
    int64_t small_nodes[SMALL_PATH];
    int small_codes[SMALL_PATH];
    int64_t *nodes = small_nodes;
    int *codes = small_codes;
    if (n > SMALL_PATH) {
        nodes = PyMem_Malloc((size_t)n * sizeof(int64_t));
        codes = PyMem_Malloc((size_t)n * sizeof(int));
        if (nodes == NULL || codes == NULL) {
            PyMem_Free(nodes);
            PyMem_Free(codes);
            return PyErr_NoMemory();
        }
    }
    memcpy(nodes, search->scratch->nodes.items, (size_t)n * sizeof(int64_t));
    PyObject *path = NULL;
    if (step_codes(search, meet_at, outs, ins, out_mask, in_mask, codes) == 0) {
        for (Py_ssize_t i = 0; i < n; i++)
            if (nodes[i] >= 0 && nodes[i] < n_names)
                prefetch(PyList_GET_ITEM(names, nodes[i]));
        /* the scratch is no longer needed: a search started while building may take it */
        give_back(search->scratch);
        search->scratch = NULL;
        path = build_path(names, nodes, codes, n);
    }
    if (nodes != small_nodes) {
        PyMem_Free(nodes);
        PyMem_Free(codes);
    }
    return path;
}

static PyObject *
find_path(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_Format(PyExc_TypeError, "find_path takes 7 arguments (%zd given)", nargs);
        return NULL;
    }
    if (path_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_pathcore.configure was not called");
        return NULL;
    }
    PyObject *tables = args[0], *source = args[1], *target = args[2];
    long long max_depth, visit_limit;
    unsigned out_mask, in_mask;
    if (as_bound(args[3], &max_depth) < 0 || as_mask(args[4], &out_mask) < 0 ||
        as_mask(args[5], &in_mask) < 0 || as_bound(args[6], &visit_limit) < 0)
        return NULL;
    if (!PyTuple_Check(tables) || PyTuple_GET_SIZE(tables) != 4 ||
        !PyDict_Check(PyTuple_GET_ITEM(tables, 0)) || !PyList_Check(PyTuple_GET_ITEM(tables, 1)) ||
        !PyList_Check(PyTuple_GET_ITEM(tables, 2)) || !PyList_Check(PyTuple_GET_ITEM(tables, 3))) {
        PyErr_SetString(PyExc_TypeError, "tables must be GraphIndex.tables");
        return NULL;
    }
    PyObject *ids = PyTuple_GET_ITEM(tables, 0), *names = PyTuple_GET_ITEM(tables, 1);
    PyObject *outs = PyTuple_GET_ITEM(tables, 2), *ins = PyTuple_GET_ITEM(tables, 3);
    /* the ends' lookups: their cache misses overlap */
    prefetch(source);
    prefetch(target);
    int same = PyObject_RichCompareBool(source, target, Py_EQ);
    if (same < 0)
        return NULL;
    if (same) {
        PyObject *entities = PyList_New(1);
        if (entities != NULL)
            PyList_SET_ITEM(entities, 0, Py_NewRef(source));
        return new_path(entities, PyList_New(0));
    }
    PyObject *s_id = PyDict_GetItemWithError(ids, source);
    if (s_id == NULL && PyErr_Occurred())
        return NULL;
    if (s_id != NULL)
        prefetch(s_id);
    PyObject *t_id = PyDict_GetItemWithError(ids, target);
    if (t_id == NULL && PyErr_Occurred())
        return NULL;
    if (s_id == NULL || t_id == NULL || max_depth == 0)
        Py_RETURN_NONE;
    int64_t s, t;
    if (as_node(s_id, &s) < 0 || as_node(t_id, &t) < 0)
        return NULL;

    Search search = {.visit_limit = visit_limit, .names = names};
    /* forward: out-arrays with the out codes, in-arrays with the in codes; backward: the other
     * way round (a side with no code is left out) */
    if (out_mask && in_mask) {
        search.n_sides = 2;
        search.sides[FORWARD][0] = (Side){outs, out_mask};
        search.sides[FORWARD][1] = (Side){ins, in_mask};
        search.sides[BACKWARD][0] = (Side){ins, out_mask};
        search.sides[BACKWARD][1] = (Side){outs, in_mask};
    }
    else if (out_mask) {
        search.n_sides = 1;
        search.sides[FORWARD][0] = (Side){outs, out_mask};
        search.sides[BACKWARD][0] = (Side){ins, out_mask};
    }
    else {
        search.n_sides = 1;
        search.sides[FORWARD][0] = (Side){ins, in_mask};
        search.sides[BACKWARD][0] = (Side){outs, in_mask};
    }
    Scratch own;
    search.scratch = take_scratch(&own);
    if (search.scratch == NULL)
        return NULL;
    PyObject *result = NULL;
    const int64_t ends[2] = {s, t};
    switch (warm(names, outs, ins, ends, 2) < 0 ? FAILED : bfs(&search, s, t, max_depth)) {
    case MET:
        result = answer(&search, names, outs, ins, out_mask, in_mask);
        break;
    case NO_MEET:
        result = Py_NewRef(Py_None);
        break;
    case OVER_LIMIT: {
        give_back(search.scratch);
        search.scratch = NULL;
        PyObject *visited = PyLong_FromLongLong(search.visited);
        if (visited != NULL) {
            result = PyObject_CallFunctionObjArgs(over_limit, args[6], visited, NULL);
            Py_DECREF(visited);
            if (result != NULL) {
                Py_CLEAR(result);
                PyErr_SetString(PyExc_SystemError, "over_limit returned instead of raising");
            }
        }
        break;
    }
    default:
        break;
    }
    if (search.scratch != NULL)
        give_back(search.scratch);
    return result;
}

/* ------------------------------------------------------------------------------- module */

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS,
     "configure(Path, RelationshipKey, types by code, over_limit): what find_path answers with"},
    {"find_path", (PyCFunction)(void (*)(void))find_path, METH_FASTCALL,
     "find_path(tables, source, target, max_depth, out_mask, in_mask, visit_limit) -> Path | None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "_pathcore",
    "The bidirectional search of algorithms.find_path, in C (see algorithms.py).",
    -1,
    methods,
};

PyMODINIT_FUNC
PyInit__pathcore(void)
{
    return PyModule_Create(&module);
}
