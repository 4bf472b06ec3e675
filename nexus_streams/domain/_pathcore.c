/* The topology of one GraphIndex in C, and the search of algorithms.find_path on it.
 *
 * Why: at 1M relationships a near pair costs the cache misses of reaching both ends and their
 * neighbours, not the arithmetic. Through Python's structures each end is a chain of about
 * seven dependent misses (the id string, the ids dict's index and entry, the int object, the
 * list slot, the array object, its items). A Topology keeps the same graph so that an end is
 * three: the string, a slot of its own id table, and one 64-byte node record that holds the
 * name and, up to INLINE entries, the adjacency itself. Its big tables ask the kernel for
 * transparent huge pages, so that a miss does not also cost a page walk. Everything starts small
 * and doubles: a namespace with a handful of relationships costs a few KiB here.
 *
 * GraphIndex (index.py) keeps its Python lists and arrays, which the Python algorithms and the
 * reference search read, and mirrors every change here: add(), remove(), release(). It uses
 * the id table as its ids (get, [], in, len) instead of a dict of its own. Node
 * numbers and the order of entries are the index's, so both searches meet the same nodes in
 * the same order and give the same paths (tests/unit/test_pathcore.py checks it).
 *
 * find_path(topology, source, target, max_depth, out_mask, in_mask, visit_limit) answers a
 * Path or None, or raises what the configured over_limit callback raises. The masks have bit c
 * set for each type code c followed on the out-entries / in-entries. No Python code runs during
 * the search.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

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

/* the descriptor of slot `name` of `cls`: an object slot (__slots__), written in place */
static PyObject *
slot_descriptor(PyObject *cls, const char *name)
{
    PyObject *dict = PyObject_GetAttrString(cls, "__dict__");
    if (dict == NULL)
        return NULL;
    PyObject *descr = PyMapping_GetItemString(dict, name);
    Py_DECREF(dict);
    if (descr != NULL && (!Py_IS_TYPE(descr, &PyMemberDescr_Type) ||
                          ((PyMemberDescrObject *)descr)->d_member->type != T_OBJECT_EX ||
                          ((PyMemberDescrObject *)descr)->d_member->flags & READONLY)) {
        PyErr_Format(PyExc_TypeError, "%s is not an object slot", name);
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

/* ------------------------------------------------------------------- big tables (huge pages) */

/* Tables of 2 MiB and more are mapped on their own and advised to use transparent huge pages
 * (where the kernel offers them on request); smaller ones come from the heap. Zeroed. */
#define HUGE_FROM ((size_t)2 << 20)

static void *
table_alloc(size_t bytes)
{
#if defined(__linux__) && defined(MAP_ANONYMOUS)
    if (bytes >= HUGE_FROM) {
        void *at = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (at == MAP_FAILED)
            return NULL;
#if defined(MADV_HUGEPAGE)
        (void)madvise(at, bytes, MADV_HUGEPAGE);
#endif
        return at;
    }
#endif
    return PyMem_Calloc(1, bytes);
}

static void
table_free(void *at, size_t bytes)
{
    if (at == NULL)
        return;
#if defined(__linux__) && defined(MAP_ANONYMOUS)
    if (bytes >= HUGE_FROM) {
        munmap(at, bytes);
        return;
    }
#endif
    (void)bytes;
    PyMem_Free(at);
}

/* --------------------------------------------------------------------- the topology (Topology) */

/* entries held in the node record itself: at 1M relationships most entities have no more */
#define INLINE 5

/* One entity: 64 bytes, a cache line. Its entries are `neighbour * 8 + type code`, the out
 * entries first, then the in entries, each part in the order GraphIndex keeps. */
typedef struct {
    PyObject *name; /* strong; NULL: a free node number */
    uint32_t n_out;
    uint32_t n_in;
    uint32_t cap; /* 0: the entries are inline */
    uint32_t unused;
    union {
        int64_t *heap;
        int64_t inline_items[INLINE];
    } u;
} Node;

/* Entries that outgrow their record go to blocks of 8, 16, 32 or 64 entries (a multiple of a
 * cache line, aligned to one) carved from chunks the topology owns: chunks grow from 1 KiB to
 * 2 MiB, and those of 2 MiB are on huge pages like the tables. Bigger blocks come from the heap. */
#define SLAB_CLASSES 4
#define SLAB_MAX 64
#define CHUNK_FIRST ((size_t)1 << 10)
#define LINE 64

typedef struct Chunk {
    struct Chunk *next;
    size_t bytes;
} Chunk;

/* Node records live in blocks that double in size, so the table grows without ever copying
 * what it holds (a copy of a big table would stall the event loop for tens of ms): block b
 * holds FIRST_BLOCK << b records, and node n is in the block of the highest bit of
 * n + FIRST_BLOCK. */
#define FIRST_BLOCK_SHIFT 4
#define FIRST_BLOCK ((int64_t)1 << FIRST_BLOCK_SHIFT)
#define MAX_BLOCKS 36

/* the id table: open addressing, linear probing; node1 = node + 1, 0 for an empty slot,
 * TOMBSTONE for a slot emptied in a table that is being moved (see IdTables) */
typedef struct {
    Py_hash_t hash;
    int64_t node1;
} IdSlot;

#define TOMBSTONE ((int64_t)-1)

typedef struct {
    IdSlot *slots; /* NULL: no table */
    size_t mask;
    int shift;
    Py_ssize_t used; /* live entries */
} IdTable;

/* Growing the id table moves its entries a few at a time, not all at once: at a million
 * entities a full rehash takes tens of ms, one event-loop step. While `old` is being moved,
 * a name is looked for in `ids` then in `old`; new names go to `ids` only; each new name moves
 * MOVE_STEP more slots of `old`; a name removed meanwhile leaves a tombstone in `old` (moving
 * entries there could carry one past the cursor). Moving ends long before `ids` needs to grow
 * again: it holds at most half of `old`'s size when moving starts, and gains one entry per
 * MOVE_STEP slots moved. */
#define MOVE_STEP 64

typedef struct {
    PyObject_HEAD
    /* node records, in blocks that double: block b holds FIRST_BLOCK << b of them (node_at) */
    Node *blocks[MAX_BLOCKS];
    int n_blocks;
    Py_ssize_t n_nodes; /* node numbers below this have a record (zeroed when free) */
    IdTable ids;
    IdTable old;     /* being moved into `ids`, or no table */
    size_t old_next; /* the first slot of `old` not moved yet */
    Py_ssize_t named; /* entities with a name */
    /* entries outside the records: blocks of up to SLAB_MAX entries carved from chunks */
    int64_t *free_blocks[SLAB_CLASSES]; /* per class, linked through their first entry */
    char *bump;                         /* the rest of the newest chunk */
    size_t bump_left;
    struct Chunk *chunks;
    size_t next_chunk;
    Py_ssize_t held_bytes; /* chunks, and the blocks of more than SLAB_MAX entries */
    int searching;         /* a search is reading the tables: they must not change */
} Topology;

static PyTypeObject TopologyType;

static inline int
highest_bit(uint64_t value)
{
#if defined(__GNUC__) || defined(__clang__)
    return 63 - __builtin_clzll(value);
#else
    int bit = 0;
    while (value >>= 1)
        bit++;
    return bit;
#endif
}

/* the record of `node` (0 <= node < n_nodes) */
static inline Node *
node_at(const Topology *topo, int64_t node)
{
    uint64_t at = (uint64_t)node + FIRST_BLOCK;
    int top = highest_bit(at);
    return &topo->blocks[top - FIRST_BLOCK_SHIFT][at - ((uint64_t)1 << top)];
}

static inline const int64_t *
items_of(const Node *node)
{
    return node->cap ? node->u.heap : node->u.inline_items;
}

static inline int64_t *
mutable_items(Node *node)
{
    return node->cap ? node->u.heap : node->u.inline_items;
}

static inline size_t
home(const IdTable *table, Py_hash_t hash)
{
    return (size_t)(((uint64_t)hash * 0x9E3779B97F4A7C15ULL) >> table->shift);
}

static int
table_init(IdTable *table, size_t size)
{
    table->slots = table_alloc(size * sizeof(IdSlot));
    if (table->slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    table->mask = size - 1;
    table->shift = 64;
    for (size_t s = size; s > 1; s >>= 1)
        table->shift--;
    table->used = 0;
    return 0;
}

static void
table_drop(IdTable *table)
{
    if (table->slots != NULL)
        table_free(table->slots, (table->mask + 1) * sizeof(IdSlot));
    table->slots = NULL;
    table->used = 0;
}

/* adds an entry that is not in the table (there is room: callers keep it at most half full) */
static void
table_put(IdTable *table, Py_hash_t hash, int64_t node1)
{
    size_t i = home(table, hash);
    while (table->slots[i].node1 > 0)
        i = (i + 1) & table->mask;
    table->slots[i] = (IdSlot){hash, node1};
    table->used++;
}

/* The node of `name` in `table`, or -1 if it has none; -2 with an exception set. */
static int64_t
table_find(const Topology *topo, const IdTable *table, PyObject *name, Py_hash_t hash)
{
    for (size_t i = home(table, hash);; i = (i + 1) & table->mask) {
        const IdSlot *slot = &table->slots[i];
        if (!slot->node1)
            return -1;
        if (slot->node1 < 0 || slot->hash != hash)
            continue;
        int64_t node = slot->node1 - 1;
        PyObject *stored = node_at(topo, node)->name;
        if (stored == name)
            return node;
        if (PyUnicode_CheckExact(stored) && PyUnicode_CheckExact(name)) {
            if (PyUnicode_GET_LENGTH(stored) == PyUnicode_GET_LENGTH(name) &&
                PyUnicode_KIND(stored) == PyUnicode_KIND(name) &&
                memcmp(PyUnicode_DATA(stored), PyUnicode_DATA(name),
                       (size_t)PyUnicode_GET_LENGTH(name) * PyUnicode_KIND(name)) == 0)
                return node;
            continue;
        }
        /* not plain strings: their __eq__ may run Python code; the topology refuses changes
         * meanwhile only during a search, so this path is for lookups outside one */
        Py_INCREF(stored);
        int same = PyObject_RichCompareBool(stored, name, Py_EQ);
        Py_DECREF(stored);
        if (same < 0)
            return -2;
        if (same)
            return node;
    }
}

/* removes the entry of `node`: backward-shift deletion, or a tombstone (`tomb`) */
static void
table_remove(IdTable *table, int64_t node, Py_hash_t hash, int tomb)
{
    size_t i = home(table, hash);
    while (table->slots[i].node1 != node + 1) {
        if (!table->slots[i].node1)
            return;
        i = (i + 1) & table->mask;
    }
    table->used--;
    if (tomb) {
        table->slots[i].node1 = TOMBSTONE;
        return;
    }
    for (size_t j = (i + 1) & table->mask; table->slots[j].node1; j = (j + 1) & table->mask) {
        size_t k = home(table, table->slots[j].hash);
        /* the entry at j stays unless its home is cyclically outside (i, j] */
        int stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
        if (stays)
            continue;
        table->slots[i] = table->slots[j];
        i = j;
    }
    table->slots[i].node1 = 0;
}

/* moves up to `count` slots of the old table into the new one; drops it once all are moved */
static void
move_ids(Topology *topo, size_t count)
{
    IdTable *old = &topo->old;
    if (old->slots == NULL)
        return;
    size_t size = old->mask + 1;
    size_t end = size - topo->old_next < count ? size : topo->old_next + count;
    for (size_t i = topo->old_next; i < end; i++)
        if (old->slots[i].node1 > 0)
            table_put(&topo->ids, old->slots[i].hash, old->slots[i].node1);
    topo->old_next = end;
    if (end == size)
        table_drop(old);
}

/* The node of `name`, or -1 if it has none; -2 with an exception set. */
static int64_t
lookup_hashed(const Topology *topo, PyObject *name, Py_hash_t hash)
{
    int64_t node = table_find(topo, &topo->ids, name, hash);
    if (node == -1 && topo->old.slots != NULL)
        node = table_find(topo, &topo->old, name, hash);
    return node;
}

static int64_t
lookup(const Topology *topo, PyObject *name)
{
    Py_hash_t hash = PyObject_Hash(name);
    if (hash == -1)
        return -2;
    return lookup_hashed(topo, name, hash);
}

static int
ensure_node(Topology *topo, int64_t node)
{
    while (node >= topo->n_nodes) {
        if (topo->n_blocks == MAX_BLOCKS) {
            PyErr_Format(PyExc_OverflowError, "node %lld is too large", (long long)node);
            return -1;
        }
        size_t count = (size_t)FIRST_BLOCK << topo->n_blocks;
        Node *block = table_alloc(count * sizeof(Node));
        if (block == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        topo->blocks[topo->n_blocks++] = block;
        topo->n_nodes += (Py_ssize_t)count;
    }
    return 0;
}

/* gives `node` its name (and an id slot) if it has none yet */
static int
name_node(Topology *topo, int64_t node, PyObject *name)
{
    Node *record = node_at(topo, node);
    if (record->name != NULL)
        return 0;
    Py_hash_t hash = PyObject_Hash(name);
    if (hash == -1)
        return -1;
    if ((size_t)(topo->ids.used + 1) * 2 > topo->ids.mask + 1) {
        move_ids(topo, SIZE_MAX); /* never needed by the arithmetic above: a safety net */
        IdTable bigger;
        if (table_init(&bigger, (topo->ids.mask + 1) * 2) < 0)
            return -1;
        topo->old = topo->ids;
        topo->old_next = 0;
        topo->ids = bigger;
    }
    move_ids(topo, MOVE_STEP);
    table_put(&topo->ids, hash, node + 1);
    topo->named++;
    record->name = Py_NewRef(name);
    return 0;
}

/* removes the id slot(s) of `node` */
static void
unname_node(Topology *topo, int64_t node, Py_hash_t hash)
{
    table_remove(&topo->ids, node, hash, 0);
    if (topo->old.slots != NULL)
        table_remove(&topo->old, node, hash, 1);
    topo->named--;
}

static inline int
slab_class(uint32_t cap)
{
    return cap <= 8 ? 0 : cap <= 16 ? 1 : cap <= 32 ? 2 : 3;
}

/* room for `cap` entries (8, 16, 32, 64, then any): from the chunks, or the heap */
static int64_t *
entries_alloc(Topology *topo, uint32_t cap)
{
    size_t bytes = (size_t)cap * sizeof(int64_t);
    if (cap > SLAB_MAX) {
        int64_t *block = PyMem_Malloc(bytes);
        if (block != NULL)
            topo->held_bytes += (Py_ssize_t)bytes;
        return block;
    }
    int c = slab_class(cap);
    int64_t *block = topo->free_blocks[c];
    if (block != NULL) {
        topo->free_blocks[c] = *(int64_t **)block;
        return block;
    }
    if (topo->bump_left < bytes) {
        size_t size = topo->next_chunk ? topo->next_chunk : CHUNK_FIRST;
        Chunk *chunk = table_alloc(size);
        if (chunk == NULL)
            return NULL;
        chunk->next = topo->chunks;
        chunk->bytes = size;
        topo->chunks = chunk;
        topo->held_bytes += (Py_ssize_t)size;
        if (size < HUGE_FROM)
            topo->next_chunk = size * 2;
        uintptr_t first = ((uintptr_t)(chunk + 1) + LINE - 1) & ~(uintptr_t)(LINE - 1);
        topo->bump = (char *)first;
        topo->bump_left = size - (size_t)(first - (uintptr_t)chunk);
    }
    block = (int64_t *)topo->bump;
    topo->bump += bytes;
    topo->bump_left -= bytes;
    return block;
}

static void
entries_free(Topology *topo, int64_t *block, uint32_t cap)
{
    if (cap > SLAB_MAX) {
        PyMem_Free(block);
        topo->held_bytes -= (Py_ssize_t)cap * (Py_ssize_t)sizeof(int64_t);
        return;
    }
    int c = slab_class(cap);
    *(int64_t **)block = topo->free_blocks[c];
    topo->free_blocks[c] = block;
}

/* inserts `item` at position `at` of the node's entries */
static int
insert_item(Topology *topo, Node *node, uint32_t at, int64_t item)
{
    uint32_t total = node->n_out + node->n_in;
    uint32_t room = node->cap ? node->cap : INLINE;
    if (total == UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "too many relationships on one entity");
        return -1;
    }
    if (total + 1 > room) {
        uint32_t cap = room < 8 ? 8 : (room > UINT32_MAX / 2 ? UINT32_MAX : room * 2);
        int64_t *heap = entries_alloc(topo, cap);
        if (heap == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        memcpy(heap, items_of(node), (size_t)total * sizeof(int64_t));
        if (node->cap)
            entries_free(topo, node->u.heap, node->cap);
        node->u.heap = heap;
        node->cap = cap;
    }
    int64_t *items = mutable_items(node);
    memmove(&items[at + 1], &items[at], (size_t)(total - at) * sizeof(int64_t));
    items[at] = item;
    return 0;
}

/* removes the first `item` among entries [from, from + n); 0 if it is not there */
static int
remove_item(Topology *topo, Node *node, uint32_t from, uint32_t n, int64_t item)
{
    int64_t *items = mutable_items(node);
    uint32_t total = node->n_out + node->n_in;
    for (uint32_t i = from; i < from + n; i++) {
        if (items[i] != item)
            continue;
        memmove(&items[i], &items[i + 1], (size_t)(total - i - 1) * sizeof(int64_t));
        total--;
        if (node->cap && total <= INLINE) { /* back into the record */
            int64_t *heap = node->u.heap;
            uint32_t cap = node->cap;
            node->cap = 0;
            memcpy(node->u.inline_items, heap, (size_t)total * sizeof(int64_t));
            entries_free(topo, heap, cap);
        }
        return 1;
    }
    return 0;
}

static int
check_node(const Topology *topo, long long node, int named)
{
    if (node < 0 || node >= topo->n_nodes || (named && node_at(topo, node)->name == NULL)) {
        PyErr_Format(PyExc_IndexError, "node %lld is not in the topology", node);
        return -1;
    }
    return 0;
}

static int
check_writable(const Topology *topo)
{
    if (topo->searching) {
        PyErr_SetString(PyExc_RuntimeError, "the topology is being searched");
        return -1;
    }
    return 0;
}

/* add(source_node, source_name, target_node, target_name, code): GraphIndex.add's arrays */
static PyObject *
topology_add(Topology *topo, PyObject *args)
{
    long long s, t;
    int code;
    PyObject *s_name, *t_name;
    if (!PyArg_ParseTuple(args, "LOLOi:add", &s, &s_name, &t, &t_name, &code))
        return NULL;
    if (s < 0 || t < 0 || code < 0 || code > 7) {
        PyErr_SetString(PyExc_ValueError, "nodes must be >= 0 and the code 0 to 7");
        return NULL;
    }
    if (check_writable(topo) < 0 || ensure_node(topo, s > t ? s : t) < 0 ||
        name_node(topo, s, s_name) < 0 || name_node(topo, t, t_name) < 0)
        return NULL;
    Node *source = node_at(topo, s);
    if (insert_item(topo, source, source->n_out, t * 8 + code) < 0)
        return NULL;
    source->n_out++;
    Node *target = node_at(topo, t);
    if (insert_item(topo, target, target->n_out + target->n_in, s * 8 + code) < 0) {
        remove_item(topo, source, 0, source->n_out, t * 8 + code);
        source->n_out--;
        return NULL;
    }
    target->n_in++;
    Py_RETURN_NONE;
}

/* remove(source_node, target_node, code): GraphIndex.remove's arrays; False if not there */
static PyObject *
topology_remove(Topology *topo, PyObject *args)
{
    long long s, t;
    int code;
    if (!PyArg_ParseTuple(args, "LLi:remove", &s, &t, &code))
        return NULL;
    if (check_writable(topo) < 0 || check_node(topo, s, 1) < 0 || check_node(topo, t, 1) < 0)
        return NULL;
    Node *source = node_at(topo, s);
    if (!remove_item(topo, source, 0, source->n_out, t * 8 + code))
        Py_RETURN_FALSE;
    source->n_out--;
    Node *target = node_at(topo, t);
    if (!remove_item(topo, target, target->n_out, target->n_in, s * 8 + code)) {
        PyErr_SetString(PyExc_SystemError, "the topology's in-entries disagree with its out-entries");
        return NULL;
    }
    target->n_in--;
    Py_RETURN_TRUE;
}

/* release(node): the entity has no relationship left; its number may be given to another */
static PyObject *
topology_release(Topology *topo, PyObject *arg)
{
    long long n = PyLong_AsLongLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (check_writable(topo) < 0 || check_node(topo, n, 1) < 0)
        return NULL;
    Node *node = node_at(topo, n);
    if (node->n_out || node->n_in) {
        PyErr_Format(PyExc_ValueError, "node %lld still has relationships", n);
        return NULL;
    }
    Py_hash_t hash = PyObject_Hash(node->name);
    if (hash == -1)
        return NULL;
    unname_node(topo, n, hash);
    PyObject *name = node->name;
    if (node->cap)
        entries_free(topo, node->u.heap, node->cap);
    memset(node, 0, sizeof(*node));
    Py_DECREF(name);
    Py_RETURN_NONE;
}

/* get(name, default=None) -> int: the node of a name, as dict.get (GraphIndex keeps its ids
 * here instead of in a dict where the extension is built) */
static PyObject *
topology_get(Topology *topo, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError, "get takes 1 or 2 arguments (%zd given)", nargs);
        return NULL;
    }
    int64_t node = lookup(topo, args[0]);
    if (node == -2)
        return NULL;
    if (node < 0)
        return Py_NewRef(nargs == 2 ? args[1] : Py_None);
    return PyLong_FromLongLong(node);
}

static PyObject *
topology_subscript(Topology *topo, PyObject *name)
{
    int64_t node = lookup(topo, name);
    if (node == -2)
        return NULL;
    if (node < 0) {
        PyErr_SetObject(PyExc_KeyError, name);
        return NULL;
    }
    return PyLong_FromLongLong(node);
}

static int
topology_contains(Topology *topo, PyObject *name)
{
    int64_t node = lookup(topo, name);
    return node == -2 ? -1 : node >= 0;
}

/* entries(node) -> (name, out entries, in entries), or None for a free number */
static PyObject *
topology_entries(Topology *topo, PyObject *arg)
{
    long long n = PyLong_AsLongLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (check_node(topo, n, 0) < 0)
        return NULL;
    const Node *node = node_at(topo, n);
    if (node->name == NULL)
        Py_RETURN_NONE;
    PyObject *name = Py_NewRef(node->name);
    PyObject *outs = PyList_New(node->n_out), *ins = PyList_New(node->n_in);
    if (outs == NULL || ins == NULL)
        goto error;
    node = node_at(topo, n); /* allocating may have run code that changed the tables */
    if ((Py_ssize_t)node->n_out != PyList_GET_SIZE(outs) || (Py_ssize_t)node->n_in != PyList_GET_SIZE(ins)) {
        PyErr_SetString(PyExc_RuntimeError, "the topology changed while it was read");
        goto error;
    }
    const int64_t *items = items_of(node);
    for (uint32_t i = 0; i < node->n_out + node->n_in; i++) {
        PyObject *item = PyLong_FromLongLong(items[i]);
        if (item == NULL)
            goto error;
        if (i < node->n_out)
            PyList_SET_ITEM(outs, i, item);
        else
            PyList_SET_ITEM(ins, i - node->n_out, item);
        items = items_of(node_at(topo, n));
    }
    return Py_BuildValue("NNN", name, outs, ins);
error:
    Py_DECREF(name);
    Py_XDECREF(outs);
    Py_XDECREF(ins);
    return NULL;
}

static PyObject *
topology_sizeof(Topology *topo, PyObject *Py_UNUSED(ignored))
{
    size_t bytes = sizeof(Topology) + (size_t)topo->n_nodes * sizeof(Node) +
                   (topo->ids.mask + 1) * sizeof(IdSlot) +
                   (topo->old.slots ? (topo->old.mask + 1) * sizeof(IdSlot) : 0) +
                   (size_t)topo->held_bytes;
    return PyLong_FromSize_t(bytes);
}

static Py_ssize_t
topology_len(Topology *topo)
{
    return topo->named;
}

static PyObject *
topology_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    if (PyTuple_GET_SIZE(args) || (kwargs != NULL && PyDict_GET_SIZE(kwargs))) {
        PyErr_SetString(PyExc_TypeError, "Topology() takes no arguments");
        return NULL;
    }
    Topology *topo = (Topology *)type->tp_alloc(type, 0);
    if (topo == NULL)
        return NULL;
    if (table_init(&topo->ids, 16) < 0) {
        Py_DECREF(topo);
        return NULL;
    }
    return (PyObject *)topo;
}

static void
topology_dealloc(Topology *topo)
{
    for (Py_ssize_t i = 0; i < topo->n_nodes; i++) {
        Node *node = node_at(topo, i);
        if (node->cap > SLAB_MAX)
            PyMem_Free(node->u.heap);
        Py_XDECREF(node->name);
    }
    for (Chunk *chunk = topo->chunks; chunk != NULL;) {
        Chunk *next = chunk->next;
        table_free(chunk, chunk->bytes);
        chunk = next;
    }
    for (int b = 0; b < topo->n_blocks; b++)
        table_free(topo->blocks[b], ((size_t)FIRST_BLOCK << b) * sizeof(Node));
    table_drop(&topo->ids);
    table_drop(&topo->old);
    Py_TYPE(topo)->tp_free((PyObject *)topo);
}

static PyMethodDef topology_methods[] = {
    {"add", (PyCFunction)topology_add, METH_VARARGS,
     "add(source_node, source_name, target_node, target_name, code): a relationship"},
    {"remove", (PyCFunction)topology_remove, METH_VARARGS,
     "remove(source_node, target_node, code) -> bool: a relationship"},
    {"release", (PyCFunction)topology_release, METH_O,
     "release(node): an entity left with no relationship"},
    {"get", (PyCFunction)(void (*)(void))topology_get, METH_FASTCALL,
     "get(name, default=None) -> int: the node of a name, as dict.get"},
    {"node_of", (PyCFunction)(void (*)(void))topology_get, METH_FASTCALL,
     "node_of(name) -> int | None: the same as get(name)"},
    {"entries", (PyCFunction)topology_entries, METH_O,
     "entries(node) -> (name, out entries, in entries) | None"},
    {"__sizeof__", (PyCFunction)topology_sizeof, METH_NOARGS, "bytes held"},
    {NULL, NULL, 0, NULL},
};

static PyMappingMethods topology_as_mapping = {
    .mp_length = (lenfunc)topology_len,
    .mp_subscript = (binaryfunc)topology_subscript,
};

static PySequenceMethods topology_as_sequence = {
    .sq_length = (lenfunc)topology_len,
    .sq_contains = (objobjproc)topology_contains,
};

static PyTypeObject TopologyType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "nexus_streams.domain._pathcore.Topology",
    .tp_doc = "The graph of one GraphIndex, for find_path: its ids (get, [], in, len: the node "
              "of a name, as a dict) and each node's entries.",
    .tp_basicsize = sizeof(Topology),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = topology_new,
    .tp_dealloc = (destructor)topology_dealloc,
    .tp_methods = topology_methods,
    .tp_as_sequence = &topology_as_sequence,
    .tp_as_mapping = &topology_as_mapping,
};

/* ------------------------------------------------------------------------------ the search */

enum { OUT_ENTRIES = 0, IN_ENTRIES = 1 };

typedef struct {
    int which;     /* OUT_ENTRIES or IN_ENTRIES */
    unsigned mask; /* bit c: follow type code c */
} Side;

typedef struct {
    Scratch *scratch;
    const Topology *topo;
    Side sides[2][2]; /* per search (FORWARD, BACKWARD): the entries it reads */
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

static inline void
prefetch(const void *at)
{
#if defined(__GNUC__) || defined(__clang__)
    __builtin_prefetch(at);
#else
    (void)at;
#endif
}

/* the `which` entries of `node`: their first, and how many in `n` */
static inline const int64_t *
entries(const Node *node, int which, Py_ssize_t *n)
{
    const int64_t *items = items_of(node);
    if (which == OUT_ENTRIES) {
        *n = node->n_out;
        return items;
    }
    *n = node->n_in;
    return items + node->n_out;
}

/* Frontier nodes are read a chunk at a time: their records were prefetched as they were found;
 * the entries of those that keep them outside the record are prefetched for the whole chunk
 * before any is read, so that the misses overlap. */
#define CHUNK 8
/* the first nodes of the next level: their records are prefetched as they are found */
#define PREFETCH_NEXT 64

static inline void
prefetch_heaps(const Topology *topo, const int64_t *nodes, int count)
{
    for (int k = 0; k < count; k++) {
        const Node *node = node_at(topo, nodes[k]);
        if (node->cap)
            prefetch(node->u.heap);
    }
}

static inline int
chunk_of(const Vec *frontier, Py_ssize_t i)
{
    return frontier->len - i < CHUNK ? (int)(frontier->len - i) : CHUNK;
}

static int
bad_node(int64_t node)
{
    PyErr_Format(PyExc_SystemError, "entry names node %lld, outside the topology", (long long)node);
    return FAILED;
}

/* One BFS level of search `side` (algorithms._expand): records what it reaches, fills
 * scratch->next, stops at the first node of the other search. */
static int
expand(Search *search, int side)
{
    Scratch *scratch = search->scratch;
    const Topology *topo = search->topo;
    Table *table = &scratch->table;
    const Vec *frontier = &scratch->front[side];
    Vec *next = &scratch->next;
    const int n_sides = search->n_sides;
    const Side *sides = search->sides[side];
    next->len = 0;
    for (Py_ssize_t i = 0; i < frontier->len; i += CHUNK) {
        int count = chunk_of(frontier, i);
        prefetch_heaps(topo, &frontier->items[i], count);
        for (int k = 0; k < count; k++) {
            int64_t u = frontier->items[i + k];
            const Node *node = node_at(topo, u);
            for (int j = 0; j < n_sides; j++) {
                const unsigned mask = sides[j].mask;
                Py_ssize_t n;
                const int64_t *items = entries(node, sides[j].which, &n);
                for (Py_ssize_t x = 0; x < n; x++) {
                    int64_t p = items[x];
                    if (!(mask >> (p & 7) & 1))
                        continue;
                    int64_t v = p >> 3;
                    Slot *slot = probe(table, v);
                    if (slot->gen == table->gen) {
                        if (slot->side != side) {
                            search->meet = v;
                            search->meet_pred = u;
                            search->meet_side = side;
                            return MET;
                        }
                        continue;
                    }
                    if (v >= topo->n_nodes)
                        return bad_node(v);
                    if (record(table, slot, v, side, u) < 0 || push(next, v) < 0)
                        return FAILED;
                    search->count[side]++;
                    if (next->len <= PREFETCH_NEXT)
                        prefetch(node_at(topo, v));
                }
            }
            long long visited = (long long)search->count[side] + search->count[!side];
            if (visited > search->visit_limit) {
                search->visited = visited;
                return OVER_LIMIT;
            }
        }
    }
    return NO_MEET;
}

/* The last level (algorithms._meet): looks for a node of the other search without recording
 * anything; once the entries read could have passed the visit limit, `expand` redoes it. */
static int
meet_level(Search *search, int side)
{
    Scratch *scratch = search->scratch;
    const Topology *topo = search->topo;
    const Table *table = &scratch->table;
    const Vec *frontier = &scratch->front[side];
    const int n_sides = search->n_sides;
    const Side *sides = search->sides[side];
    long long room = search->visit_limit - search->count[0] - search->count[1];
    long long read = 0;
    for (Py_ssize_t i = 0; i < frontier->len; i += CHUNK) {
        int count = chunk_of(frontier, i);
        prefetch_heaps(topo, &frontier->items[i], count);
        for (int k = 0; k < count; k++) {
            const Node *node = node_at(topo, frontier->items[i + k]);
            for (int j = 0; j < n_sides; j++) {
                const unsigned mask = sides[j].mask;
                Py_ssize_t n;
                const int64_t *items = entries(node, sides[j].which, &n);
                read += n;
                for (Py_ssize_t x = 0; x < n; x++) {
                    int64_t p = items[x];
                    if (!(mask >> (p & 7) & 1))
                        continue;
                    const Slot *slot = probe(table, p >> 3);
                    if (slot->gen == table->gen && slot->side != side) {
                        search->meet = p >> 3;
                        search->meet_pred = frontier->items[i + k];
                        search->meet_side = side;
                        return MET;
                    }
                }
            }
            if (read > room)
                return expand(search, side);
        }
    }
    return NO_MEET;
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
    /* Most near pairs are one step apart. The first level expands the source and can only meet
     * the target itself: the first entry leading to it is where that expansion would stop, so
     * it is looked for first, before anything is recorded or prefetched. */
    for (int j = 0; j < search->n_sides; j++) {
        Py_ssize_t n;
        const int64_t *items = entries(node_at(search->topo, s), search->sides[FORWARD][j].which, &n);
        const unsigned mask = search->sides[FORWARD][j].mask;
        for (Py_ssize_t x = 0; x < n; x++) {
            if (items[x] >> 3 == t && mask >> (items[x] & 7) & 1) {
                search->meet = t;
                search->meet_pred = s;
                search->meet_side = FORWARD;
                return MET;
            }
        }
    }
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

/* What the slot's descriptor would do on a new object (whose slots are all NULL), without
 * its checks: configure made sure each is a writable object slot of that class. */
static inline int
set_slot(PyObject *descr, PyObject *obj, PyObject *value)
{
    PyObject **slot = (PyObject **)((char *)obj + ((PyMemberDescrObject *)descr)->d_member->offset);
    Py_XSETREF(*slot, Py_NewRef(value));
    return 0;
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

/* Bit c set: the `which` entries of `node` hold other * 8 + c. Reads those entries, which the
 * search has just read (no cache miss), unless there are many: then the fewer of them and of
 * the mirror (the other entries of `other`, holding node * 8 + c), as
 * algorithms._first_stored. */
static unsigned
codes_towards(const Topology *topo, int which, int64_t node, int64_t other)
{
    Py_ssize_t n, n_mirror;
    const int64_t *items = entries(node_at(topo, node), which, &n);
    int64_t wanted = other;
    if (n > 256) {
        const int64_t *mirror = entries(node_at(topo, other), !which, &n_mirror);
        if (n_mirror < n) {
            items = mirror;
            n = n_mirror;
            wanted = node;
        }
    }
    unsigned present = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (items[i] >> 3 == wanted)
            present |= 1u << (items[i] & 7);
    return present;
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
 * stored a -> b (in a's out-entries, with the lowest code of out_mask), else 8-11 when stored
 * b -> a (in a's in-entries, with the lowest code of in_mask). Each step is read on the node
 * the search expanded to take it, whose entries are in the cache: a up to the meeting node,
 * b after. */
static int
step_codes(const Search *search, Py_ssize_t meet_at, unsigned out_mask, unsigned in_mask,
           int *codes)
{
    const Topology *topo = search->topo;
    const Vec *nodes = &search->scratch->nodes;
    for (Py_ssize_t i = 1; i < nodes->len; i++) {
        int64_t a = nodes->items[i - 1], b = nodes->items[i];
        int from_a = i <= meet_at;
        int code = -1;
        if (out_mask & 0xF) {
            unsigned present = from_a ? codes_towards(topo, OUT_ENTRIES, a, b)
                                      : codes_towards(topo, IN_ENTRIES, b, a);
            code = first_code(present, out_mask);
        }
        if (code < 0 && in_mask & 0xF) {
            unsigned present = from_a ? codes_towards(topo, IN_ENTRIES, a, b)
                                      : codes_towards(topo, OUT_ENTRIES, b, a);
            code = first_code(present, in_mask);
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

/* The Path of `names` (strong references, given up here) with the relationships of `codes`. */
static PyObject *
build_path(PyObject **names, const int *codes, Py_ssize_t n)
{
    PyObject *entities = PyList_New(n);
    PyObject *keys = entities ? PyList_New(n - 1) : NULL;
    if (keys == NULL) {
        Py_XDECREF(entities);
        for (Py_ssize_t i = 0; i < n; i++)
            Py_DECREF(names[i]);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        PyList_SET_ITEM(entities, i, names[i]);
    for (Py_ssize_t i = 1; i < n; i++) {
        PyObject *a = PyList_GET_ITEM(entities, i - 1), *b = PyList_GET_ITEM(entities, i);
        int code = codes[i - 1];
        PyObject *key = code < 8 ? new_key(a, code, b) : new_key(b, code - 8, a);
        if (key == NULL) {
            Py_DECREF(entities);
            Py_DECREF(keys);
            return NULL;
        }
        PyList_SET_ITEM(keys, i - 1, key);
    }
    return new_path(entities, keys);
}

/* ------------------------------------------------------------------------------ find_path */

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

/* The Path the search met on. Names and codes are taken before any object is made: making
 * one can run Python code (a finalizer), which may change the topology or search again. */
static PyObject *
answer(Search *search, unsigned out_mask, unsigned in_mask)
{
    Py_ssize_t meet_at = path_nodes(search);
    if (meet_at < 0)
        return NULL;
    const Topology *topo = search->topo;
    Py_ssize_t n = search->scratch->nodes.len;
    PyObject *small_names[SMALL_PATH];
    int small_codes[SMALL_PATH];
    PyObject **names = small_names;
    int *codes = small_codes;
    if (n > SMALL_PATH) {
        names = PyMem_Malloc((size_t)n * sizeof(PyObject *));
        codes = PyMem_Malloc((size_t)n * sizeof(int));
        if (names == NULL || codes == NULL) {
            PyMem_Free(names);
            PyMem_Free(codes);
            return PyErr_NoMemory();
        }
    }
    PyObject *path = NULL;
    if (step_codes(search, meet_at, out_mask, in_mask, codes) == 0) {
        for (Py_ssize_t i = 0; i < n; i++)
            names[i] = Py_NewRef(node_at(topo, search->scratch->nodes.items[i])->name);
        give_back(search->scratch);
        search->scratch = NULL;
        ((Topology *)topo)->searching = 0;
        path = build_path(names, codes, n);
    }
    if (names != small_names) {
        PyMem_Free(names);
        PyMem_Free(codes);
    }
    return path;
}

/* The node of both ends, their lookups overlapping: the strings' hashes, then the id slots,
 * then the node records are each brought in for both before either is followed. 0, or -1. */
static int
ends(const Topology *topo, PyObject *source, PyObject *target, int64_t *s, int64_t *t)
{
    prefetch(source);
    prefetch(target);
    Py_hash_t hs = PyObject_Hash(source);
    if (hs == -1)
        return -1;
    Py_hash_t ht = PyObject_Hash(target);
    if (ht == -1)
        return -1;
    const IdSlot *slot_s = &topo->ids.slots[home(&topo->ids, hs)];
    const IdSlot *slot_t = &topo->ids.slots[home(&topo->ids, ht)];
    prefetch(slot_s);
    prefetch(slot_t);
    if (slot_s->node1 > 0)
        prefetch(node_at(topo, slot_s->node1 - 1));
    if (slot_t->node1 > 0)
        prefetch(node_at(topo, slot_t->node1 - 1));
    *s = lookup_hashed(topo, source, hs);
    if (*s == -2)
        return -1;
    if (*s >= 0 && node_at(topo, *s)->cap)
        prefetch(node_at(topo, *s)->u.heap);
    *t = lookup_hashed(topo, target, ht);
    if (*t == -2)
        return -1;
    if (*t >= 0 && node_at(topo, *t)->cap)
        prefetch(node_at(topo, *t)->u.heap);
    return 0;
}

/* source == target, as Python compares them; for two strings, their (cached) hashes first */
static int
same_entity(PyObject *source, PyObject *target)
{
    if (source == target)
        return 1;
    if (PyUnicode_CheckExact(source) && PyUnicode_CheckExact(target)) {
        Py_hash_t hs = PyObject_Hash(source), ht = PyObject_Hash(target);
        if (hs == -1 || ht == -1)
            return -1;
        if (hs != ht)
            return 0;
    }
    return PyObject_RichCompareBool(source, target, Py_EQ);
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
    if (!PyObject_TypeCheck(args[0], &TopologyType)) {
        PyErr_SetString(PyExc_TypeError, "find_path searches a Topology");
        return NULL;
    }
    Topology *topo = (Topology *)args[0];
    PyObject *source = args[1], *target = args[2];
    long long max_depth, visit_limit;
    unsigned out_mask, in_mask;
    if (as_bound(args[3], &max_depth) < 0 || as_mask(args[4], &out_mask) < 0 ||
        as_mask(args[5], &in_mask) < 0 || as_bound(args[6], &visit_limit) < 0)
        return NULL;
    int same = same_entity(source, target);
    if (same < 0)
        return NULL;
    if (same) {
        PyObject *entities = PyList_New(1);
        if (entities != NULL)
            PyList_SET_ITEM(entities, 0, Py_NewRef(source));
        return new_path(entities, PyList_New(0));
    }
    int64_t s, t;
    if (ends(topo, source, target, &s, &t) < 0)
        return NULL;
    if (s < 0 || t < 0 || max_depth == 0)
        Py_RETURN_NONE;

    Search search = {.visit_limit = visit_limit, .topo = topo};
    /* forward: out-entries with the out codes, in-entries with the in codes; backward: the
     * other way round (a side with no code is left out) */
    if (out_mask && in_mask) {
        search.n_sides = 2;
        search.sides[FORWARD][0] = (Side){OUT_ENTRIES, out_mask};
        search.sides[FORWARD][1] = (Side){IN_ENTRIES, in_mask};
        search.sides[BACKWARD][0] = (Side){IN_ENTRIES, out_mask};
        search.sides[BACKWARD][1] = (Side){OUT_ENTRIES, in_mask};
    }
    else if (out_mask) {
        search.n_sides = 1;
        search.sides[FORWARD][0] = (Side){OUT_ENTRIES, out_mask};
        search.sides[BACKWARD][0] = (Side){IN_ENTRIES, out_mask};
    }
    else {
        search.n_sides = 1;
        search.sides[FORWARD][0] = (Side){IN_ENTRIES, in_mask};
        search.sides[BACKWARD][0] = (Side){OUT_ENTRIES, in_mask};
    }
    Scratch own;
    search.scratch = take_scratch(&own);
    if (search.scratch == NULL)
        return NULL;
    int was_searching = topo->searching;
    topo->searching = 1;
    PyObject *result = NULL;
    switch (bfs(&search, s, t, max_depth)) {
    case MET:
        result = answer(&search, out_mask, in_mask);
        break;
    case NO_MEET:
        result = Py_NewRef(Py_None);
        break;
    case OVER_LIMIT: {
        give_back(search.scratch);
        search.scratch = NULL;
        topo->searching = was_searching;
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
    topo->searching = was_searching;
    return result;
}

/* ------------------------------------------------------------------------------- module */

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS,
     "configure(Path, RelationshipKey, types by code, over_limit): what find_path answers with"},
    {"find_path", (PyCFunction)(void (*)(void))find_path, METH_FASTCALL,
     "find_path(topology, source, target, max_depth, out_mask, in_mask, visit_limit) -> Path | None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "_pathcore",
    "The topology of a GraphIndex in C, and the search of algorithms.find_path on it.",
    -1,
    methods,
};

PyMODINIT_FUNC
PyInit__pathcore(void)
{
    if (PyType_Ready(&TopologyType) < 0)
        return NULL;
    PyObject *mod = PyModule_Create(&module);
    if (mod == NULL)
        return NULL;
    if (PyModule_AddObjectRef(mod, "Topology", (PyObject *)&TopologyType) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
