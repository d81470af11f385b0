#!/usr/bin/env python3
"""Independent checker of the Nomade wire-format test vectors.

Written from docs/PROTOCOL.md alone (not from the Rust code), with only the
`msgpack`, `blake3` and `cryptography` packages from PyPI and the standard
library (`cryptography` checks the signature of a REVOCATION):

    python3 -m pip install msgpack blake3 cryptography
    python3 nomade-wire/tests/interop/check_vectors.py [path/to/vectors.json]

For every vector of nomade-wire/tests/vectors.json (a JSON array of
{"name", "message_type", "frame_hex"}) it parses the frame header, checks the
version, the message type, the payload length and the BLAKE3 checksum, decodes
the MessagePack payload, checks it against the documented field set and types
(PROTOCOL.md, "Messages"), checks that it is the canonical encoding (field
order, sorted map keys, re-packing gives the same bytes), rebuilds the whole
frame from its parts, and checks that corrupted copies of the frame are
rejected. It prints "ok NAME" per vector and exits 0, or prints what failed
and exits 1. It also fails when some message type has no vector.

`--self-test` runs the checker on frames it builds itself from the spec (the
worked example of PROTOCOL.md "Test vectors" among them) instead of a file.

`--state-hash PATH` checks state-hash vectors (nomade-crdt/tests/
state_hash_vectors.json): each operation frame decodes, and the hash of the
written-out state, computed by the rules of PROTOCOL.md "State hash", is the
published one.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
import tempfile

try:
    import blake3
    import msgpack
except ImportError as e:  # pragma: no cover
    sys.exit(f"error: {e}; install with: python3 -m pip install msgpack blake3")

# --- PROTOCOL.md "Frame" -----------------------------------------------------

PROTOCOL_VERSION = 1
HEADER = struct.Struct(">BH16sqI")  # version, message_type, message_id, timestamp, payload_length
HEADER_LEN = 31
CHECKSUM_LEN = 32
MAX_PAYLOAD = 66560  # default limit: 64 KiB chunk + 1024
MAX_CHUNK_DATA = 65536
MAX_DEPTH = 24  # a counted container at nesting level >= 24 is rejected
assert HEADER.size == HEADER_LEN

I64_MIN, I64_MAX = -(2**63), 2**63 - 1


class SpecError(Exception):
    """The bytes break a MUST of PROTOCOL.md."""


class ChecksumError(SpecError):
    pass


# --- PROTOCOL.md "Payload encoding" type descriptors ---------------------------
# ("str",) ("bool",) ("uint", bits) ("i64",) ("bin", exact_len) ("binmax", max)
# ("enum", names) ("nil_or", T) ("array", T) ("vv",) ("value",) ("value_map",)
# ("struct", name, fields)  with fields = [(key, T, required), ...]
# ("edit",)

STR = ("str",)
BOOL = ("bool",)
I64 = ("i64",)
U8, U16, U32, U64 = ("uint", 8), ("uint", 16), ("uint", 32), ("uint", 64)
MESSAGE_ID = ("bin", 16)
HASH32 = ("bin", 32)
VV = ("vv",)
VALUE = ("value",)
ENTITY_TYPE = ("enum", ("document", "conversation"))
CONNECTIVITY = ("enum", ("wifi", "cellular", "ethernet", "unknown"))
PRESENCE = ("enum", ("online", "away", "busy", "offline"))


def nil_or(t):
    return ("nil_or", t)


def array(t):
    return ("array", t)


def struct_(name, *fields):
    return ("struct", name, fields)


REQ, EXT = True, False  # required (always present) / optional extension (omitted when absent)

WRAPPED_DATA_KEY = struct_(
    "WrappedDataKey",
    ("recipient", HASH32, REQ),
    ("ephemeral", HASH32, REQ),
    ("nonce", ("bin", 12), REQ),
    ("sealed", ("bin", 48), REQ),
)

def operation_types(actor, deps):
    """The operation's types with actors written as `actor` (a str in
    SYNC_OPERATION, a uint32 index into the table in BATCHED_SYNC) and
    `deps` keyed the same way."""
    element_id = struct_("ElementId", ("actor", actor, REQ), ("counter", U64, REQ))
    id_range = struct_("IdRange", ("actor", actor, REQ), ("counter", U64, REQ), ("len", U64, REQ))
    variants = {
        "set": struct_("Edit.set", ("key", STR, REQ), ("value", VALUE, REQ)),
        "delete": struct_("Edit.delete", ("key", STR, REQ)),
        "insert": struct_(
            "Edit.insert",
            ("after", nil_or(element_id), REQ),
            ("before", nil_or(element_id), REQ),
            ("values", array(VALUE), REQ),
        ),
        "insert_text": struct_(
            "Edit.insert_text",
            ("field", STR, REQ),
            ("after", nil_or(element_id), REQ),
            ("before", nil_or(element_id), REQ),
            ("text", STR, REQ),
        ),
        "remove": struct_(
            "Edit.remove",
            ("field", nil_or(STR), REQ),
            ("ranges", array(id_range), REQ),
        ),
        "skip": struct_("Edit.skip", ("span", U64, REQ)),
    }
    crdt_operation = struct_(
        "CrdtOperation", ("counter", U64, REQ), ("deps", deps, REQ), ("edit", ("edit", variants), REQ)
    )
    return struct_(
        "SYNC_OPERATION",
        ("entity_id", STR, REQ),
        ("entity_type", ENTITY_TYPE, REQ),
        ("operation", crdt_operation, REQ),
        ("timestamp", I64, REQ),
        ("actor_id", actor, REQ),
    )


SYNC_OPERATION = operation_types(STR, VV)
# Inside BATCHED_SYNC: actors are indices into `actors`; deps keys too (their
# order, by the device ids they stand for, is checked once resolved).
BATCH_OPERATION = operation_types(U32, ("vv_ref",))

MESSAGES = {
    0x0001: struct_(
        "HELLO",
        ("device_id", STR, REQ),
        ("device_name", STR, REQ),
        ("protocol_version", U8, REQ),
        ("capabilities", array(STR), REQ),
        ("sync_state_hash", HASH32, REQ),
    ),
    0x0002: struct_(
        "HELLO_ACK",
        ("device_id", STR, REQ),
        ("device_name", STR, REQ),
        ("protocol_version", U8, REQ),
        ("capabilities", array(STR), REQ),
        ("sync_state_hash", HASH32, REQ),
        ("sync_required", BOOL, REQ),
        ("bulk_port", U16, EXT),
    ),
    0x0101: struct_(
        "SYNC_REQUEST",
        ("entity_types", array(ENTITY_TYPE), REQ),
        ("since_timestamp", nil_or(I64), REQ),
        ("full_sync", BOOL, REQ),
        ("version_vector", VV, EXT),
        ("subscription", array(STR), EXT),
    ),
    0x0102: SYNC_OPERATION,
    0x0103: struct_(
        "SYNC_COMPLETE",
        ("entity_types", array(ENTITY_TYPE), REQ),
        ("operations_count", U32, REQ),
        ("new_state_hash", HASH32, REQ),
    ),
    0x0104: struct_("ACK", ("message_ids", array(MESSAGE_ID), REQ)),
    0x0105: struct_("BATCHED_SYNC", ("actors", array(STR), REQ), ("operations", array(BATCH_OPERATION), REQ)),
    0x0106: struct_(
        "DELTA_SYNC",
        ("entity_id", STR, REQ),
        ("changed_fields", ("value_map",), REQ),
        ("actor_id", STR, REQ),
        ("first_counter", U64, REQ),
        ("deps", VV, REQ),
        ("timestamp", I64, REQ),
    ),
    0x0107: struct_(
        "SYNC_SNAPSHOT",
        ("total_len", U64, REQ),
        ("offset", U64, REQ),
        ("data", ("binmax", MAX_CHUNK_DATA), REQ),
    ),
    0x0108: struct_(
        "HAVE",
        ("version_vector", VV, REQ),
        ("direct_added", array(STR), EXT),
        ("direct_removed", array(STR), EXT),
    ),
    0x0109: struct_(
        "REVOCATION",
        ("revoked", STR, REQ),
        ("cutoff", U64, REQ),
        ("issued_at", I64, REQ),
        ("signer", STR, REQ),
        ("signer_key", ("binmax", 1024), REQ),
        ("scheme", U16, REQ),
        ("signature", ("binmax", 512), REQ),
    ),
    0x0201: struct_(
        "ARTIFACT_REQUEST",
        ("artifact_id", HASH32, REQ),
        ("priority", U8, REQ),
        ("resume_from", U32, EXT),
        ("sealed_for", HASH32, EXT),
        ("metadata_only", BOOL, EXT),
        ("end_before", U32, EXT),
    ),
    0x0202: struct_(
        "ARTIFACT_METADATA",
        ("artifact_id", HASH32, REQ),
        ("size", U64, REQ),
        ("chunk_count", U32, REQ),
        ("mime_type", nil_or(STR), REQ),
        ("encrypted", BOOL, REQ),
        ("data_key", WRAPPED_DATA_KEY, EXT),
        ("recipient_keys", array(WRAPPED_DATA_KEY), EXT),
    ),
    0x0203: struct_(
        "ARTIFACT_CHUNK",
        ("artifact_id", HASH32, REQ),
        ("chunk_index", U32, REQ),
        ("chunk_data", ("binmax", MAX_CHUNK_DATA), REQ),
        ("is_final", BOOL, REQ),
        ("chunk_hash", HASH32, EXT),
        ("seal", ("bin", 28), EXT),
    ),
    0x0204: struct_(
        "ARTIFACT_COMPLETE", ("artifact_id", HASH32, REQ), ("received_hash", HASH32, REQ)
    ),
    0x0301: struct_(
        "HEARTBEAT",
        ("timestamp", I64, REQ),
        ("battery_level", nil_or(U8), REQ),
        ("connectivity", CONNECTIVITY, REQ),
    ),
    0x0302: struct_("PRESENCE_UPDATE", ("status", PRESENCE, REQ), ("message", nil_or(STR), REQ)),
    0x0401: struct_(
        "ERROR",
        ("error_code", U16, REQ),
        ("error_message", STR, REQ),
        ("related_message_id", nil_or(MESSAGE_ID), REQ),
    ),
    0x0501: struct_("RELAY_REQUEST", ("target", STR, REQ)),
    0x0502: struct_("RELAY_OFFER", ("source", STR, REQ)),
    0x0503: struct_("RELAY_ACCEPT"),
}


# --- type checking -----------------------------------------------------------


def is_int(x) -> bool:
    return type(x) is int  # bool is a subclass of int in Python: exclude it


def check_sorted_keys(keys, where):
    # Python compares str by code point, which is the same order as their UTF-8 bytes.
    if list(keys) != sorted(keys):
        raise SpecError(f"{where}: map keys are not in sorted (byte-wise) order: {list(keys)}")


def check(t, x, where: str, depth: int) -> None:
    """Checks value `x` against type `t`. `depth` is the number of counted
    containers (maps/arrays) enclosing `x`."""
    kind = t[0]
    if kind in ("array", "vv", "vv_ref", "value_map", "struct"):
        # This container is at nesting level depth + 1.
        if depth + 1 >= MAX_DEPTH:
            raise SpecError(f"{where}: nesting depth {depth + 1} reaches the limit {MAX_DEPTH}")
    if kind == "str":
        if type(x) is not str:
            raise SpecError(f"{where}: expected str, got {type(x).__name__}")
    elif kind == "bool":
        if type(x) is not bool:
            raise SpecError(f"{where}: expected bool, got {type(x).__name__}")
    elif kind == "uint":
        if not is_int(x) or not 0 <= x < 2 ** t[1]:
            raise SpecError(f"{where}: expected uint{t[1]}, got {x!r}")
    elif kind == "i64":
        if not is_int(x) or not I64_MIN <= x <= I64_MAX:
            raise SpecError(f"{where}: expected int64, got {x!r}")
    elif kind == "bin":
        if type(x) is not bytes or len(x) != t[1]:
            raise SpecError(f"{where}: expected bin of exactly {t[1]} bytes, got {x!r:.60}")
    elif kind == "binmax":
        if type(x) is not bytes:
            raise SpecError(f"{where}: expected bin, got {type(x).__name__}")
        if len(x) > t[1]:
            raise SpecError(f"{where}: bin of {len(x)} bytes exceeds {t[1]}")
    elif kind == "enum":
        if type(x) is not str or x not in t[1]:
            raise SpecError(f"{where}: expected one of {t[1]}, got {x!r}")
    elif kind == "nil_or":
        if x is not None:
            check(t[1], x, where, depth)
    elif kind == "array":
        if type(x) is not list:
            raise SpecError(f"{where}: expected array, got {type(x).__name__}")
        for i, item in enumerate(x):
            check(t[1], item, f"{where}[{i}]", depth + 1)
    elif kind == "vv":
        if type(x) is not dict:
            raise SpecError(f"{where}: expected map str -> uint64, got {type(x).__name__}")
        check_sorted_keys(x.keys(), where)
        for k, v in x.items():
            check(STR, k, f"{where} key", depth + 1)
            check(U64, v, f"{where}[{k!r}]", depth + 1)
    elif kind == "vv_ref":
        if type(x) is not dict:
            raise SpecError(f"{where}: expected map uint32 -> uint64, got {type(x).__name__}")
        for k, v in x.items():
            check(U32, k, f"{where} key", depth + 1)
            check(U64, v, f"{where}[{k!r}]", depth + 1)
    elif kind == "value_map":
        if type(x) is not dict:
            raise SpecError(f"{where}: expected map str -> Value, got {type(x).__name__}")
        check_sorted_keys(x.keys(), where)
        for k, v in x.items():
            check(STR, k, f"{where} key", depth + 1)
            check(VALUE, v, f"{where}[{k!r}]", depth + 1)
    elif kind == "value":
        check_value(x, where, depth)
    elif kind == "struct":
        check_struct(t, x, where, depth)
    elif kind == "edit":
        # {variant: {fields}}; the one-key tagging map is not a counted container.
        if type(x) is not dict or len(x) != 1:
            raise SpecError(f"{where}: Edit must be a map with exactly one key, got {x!r:.80}")
        ((variant, body),) = x.items()
        variants = t[1]
        if variant not in variants:
            raise SpecError(f"{where}: unknown Edit variant {variant!r}")
        check(variants[variant], body, f"{where}.{variant}", depth)
    else:  # pragma: no cover
        raise AssertionError(kind)


def check_value(x, where: str, depth: int) -> None:
    """The dynamic Value: nil, bool, int64, float64, str, bin, array, map with sorted str keys."""
    if x is None or type(x) in (bool, str, bytes):
        return
    if is_int(x):
        if not I64_MIN <= x <= I64_MAX:
            raise SpecError(f"{where}: Value integer {x} is outside the int64 range")
        return
    if type(x) is float:
        return  # float32 vs float64 is caught by the re-pack comparison
    if type(x) is list:
        check(("array", VALUE), x, where, depth)
        return
    if type(x) is dict:
        check(("value_map",), x, where, depth)
        return
    raise SpecError(f"{where}: {type(x).__name__} is not a Value (ext types are not allowed)")


def check_struct(t, x, where: str, depth: int) -> None:
    _, name, fields = t
    if type(x) is not dict:
        raise SpecError(f"{where}: {name} must be a map keyed by field name, got {type(x).__name__}")
    keys = list(x.keys())
    declared = [f[0] for f in fields]
    unknown = [k for k in keys if k not in declared]
    if unknown:
        raise SpecError(f"{where}: {name} has unknown field(s) {unknown}")
    missing = [f[0] for f in fields if f[2] and f[0] not in x]
    if missing:
        raise SpecError(f"{where}: {name} is missing required field(s) {missing}")
    expected_order = [k for k in declared if k in x]
    if keys != expected_order:
        raise SpecError(f"{where}: {name} fields out of order: {keys}, expected {expected_order}")
    for key, ft, required in fields:
        if key not in x:
            continue
        if not required and x[key] is None:
            raise SpecError(f"{where}: absent extension field {name}.{key} must be omitted, not nil")
        check(ft, x[key], f"{where}.{key}", depth + 1)


# --- frames --------------------------------------------------------------------


def checksum(payload: bytes) -> bytes:
    return blake3.blake3(payload).digest()  # 32 bytes, BLAKE3-256, unkeyed


def build_frame(message_type: int, message_id: bytes, timestamp: int, payload: bytes) -> bytes:
    return (
        HEADER.pack(PROTOCOL_VERSION, message_type, message_id, timestamp, len(payload))
        + payload
        + checksum(payload)
    )


COMPRESSED = 0x8000  # the message_type bit of a frame whose payload is compressed


def lz4_length(block: bytes, i: int, what: str):
    """An LZ4 length extension at `i`: bytes added up to the first below 255.
    Returns (the sum, the index after it)."""
    total = 0
    while True:
        if i >= len(block):
            raise SpecError(f"LZ4 {what} length runs past the block")
        total += block[i]
        i += 1
        if block[i - 1] != 255:
            return total, i


def lz4_block_decompress(block: bytes, size: int) -> bytes:
    """Expands an LZ4 block (the block format, no frame header) that must give
    exactly `size` bytes; anything else is a SpecError."""
    out = bytearray()
    i = 0
    while True:
        if i >= len(block):
            raise SpecError("LZ4 block ends before its last sequence")
        token = block[i]
        i += 1
        literals = token >> 4
        if literals == 15:
            more, i = lz4_length(block, i, "literal")
            literals += more
        if i + literals > len(block):
            raise SpecError("LZ4 literals run past the block")
        out += block[i : i + literals]
        i += literals
        if len(out) > size:
            raise SpecError(f"LZ4 block expands past the {size} bytes announced")
        if i == len(block):
            break  # the last sequence has literals only
        if i + 2 > len(block):
            raise SpecError("LZ4 match offset runs past the block")
        offset = block[i] | (block[i + 1] << 8)
        i += 2
        if offset == 0 or offset > len(out):
            raise SpecError(f"LZ4 match offset {offset} outside the {len(out)} bytes so far")
        length = (token & 15) + 4
        if token & 15 == 15:
            more, i = lz4_length(block, i, "match")
            length += more
        if len(out) + length > size:
            raise SpecError(f"LZ4 block expands past the {size} bytes announced")
        start = len(out) - offset
        for k in range(length):  # may overlap what it copies
            out.append(out[start + k])
    if len(out) != size:
        raise SpecError(f"LZ4 block expands to {len(out)} bytes, {size} announced")
    return bytes(out)


def decode_frame(frame: bytes):
    """Decodes exactly one frame. Returns (message_type, message_id, timestamp, payload, obj):
    the type as on the wire (with the COMPRESSED bit if set) and the payload as on the wire."""
    if len(frame) >= 1 and frame[0] != PROTOCOL_VERSION:
        raise SpecError(f"unsupported version {frame[0]}")
    if len(frame) >= 3:
        mtype = struct.unpack_from(">H", frame, 1)[0]
        if mtype & ~COMPRESSED not in MESSAGES:
            raise SpecError(f"unknown message type 0x{mtype:04x}")
    if len(frame) < HEADER_LEN:
        raise SpecError(f"truncated header: {len(frame)} of {HEADER_LEN} bytes")
    version, mtype, message_id, timestamp, length = HEADER.unpack_from(frame)
    if length > MAX_PAYLOAD:
        raise SpecError(f"payload_length {length} exceeds {MAX_PAYLOAD}")
    total = HEADER_LEN + length + CHECKSUM_LEN
    if len(frame) < total:
        raise SpecError(f"truncated body: frame is {len(frame)} bytes, header announces {total}")
    if len(frame) > total:
        raise SpecError(f"{len(frame) - total} bytes after the frame (payload_length disagrees?)")
    payload = frame[HEADER_LEN : HEADER_LEN + length]
    if checksum(payload) != frame[HEADER_LEN + length :]:
        raise ChecksumError("BLAKE3 checksum mismatch")
    if mtype & COMPRESSED:
        if len(payload) < 4:
            raise SpecError(f"compressed payload of {len(payload)} bytes has no length")
        (size,) = struct.unpack_from(">I", payload)
        if size > MAX_PAYLOAD:
            raise SpecError(f"compressed payload announces {size} bytes, more than {MAX_PAYLOAD}")
        obj = decode_payload(mtype & ~COMPRESSED, lz4_block_decompress(payload[4:], size))
    else:
        obj = decode_payload(mtype, payload)
    return mtype, message_id, timestamp, payload, obj


def decode_payload(mtype: int, payload: bytes):
    spec = MESSAGES[mtype]
    name = spec[1]
    try:
        # Only BATCHED_SYNC's deps have integer keys (actor indices); the
        # type check refuses them anywhere else.
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=mtype != 0x0105)
    except msgpack.ExtraData as e:
        raise SpecError(f"{name}: {len(e.extra)} trailing bytes after the payload value")
    except Exception as e:
        raise SpecError(f"{name}: payload is not valid MessagePack: {type(e).__name__}: {e}")
    check(spec, obj, name, 0)
    # Canonical: re-packing what we read must give the bytes we read. Python
    # dicts keep the order read, msgpack-python picks the smallest headers and
    # writes every float as float64, like the reference encoder.
    again = msgpack.packb(obj, use_bin_type=True)
    if again != payload:
        raise SpecError(f"{name}: payload is not in canonical encoding\n  got      {payload.hex()}\n  canonical {again.hex()}")
    return obj


# --- PROTOCOL.md "Device identity": the text forms of a device id ------------

B32 = set("abcdefghijklmnopqrstuvwxyz234567")


def is_device_id(s: str) -> bool:
    """Any accepted form: 32 base32 characters once dashes are removed, either case."""
    compact = s.replace("-", "").lower()
    return len(compact) == 32 and set(compact) <= B32


def is_shown_device_id(s: str) -> bool:
    """The one form that travels as an actor: 8 dash-joined groups of 4, lower case."""
    groups = s.split("-")
    return len(groups) == 8 and all(len(g) == 4 and set(g) <= B32 for g in groups)


def actors_of(mtype: int, obj):
    """Every actor id a message carries (SYNC_OPERATION and the messages built of it)."""
    def of_op(op):
        yield op["actor_id"]
        yield from op["operation"]["deps"].keys()
        ((_, body),) = op["operation"]["edit"].items()
        for end in ("after", "before"):
            if body.get(end) is not None:
                yield body[end]["actor"]
        for r in body.get("ranges", []):
            yield r["actor"]
    if mtype == 0x0102:
        yield from of_op(obj)
    elif mtype == 0x0105:
        for op in resolve_batch(obj):
            yield from of_op(op)
    elif mtype == 0x0106:
        yield obj["actor_id"]
        yield from obj["deps"].keys()
    elif mtype == 0x0101 and "version_vector" in obj:
        yield from obj["version_vector"].keys()


MAX_COUNTER = 2**64 - 2
VALID_EDITS = {
    "document": {"set", "delete", "insert_text", "remove_field"},
    "conversation": {"insert", "remove"},
}


def span(edit) -> int:
    """How many counters an edit covers (PROTOCOL.md, SYNC_OPERATION "Span")."""
    ((variant, body),) = edit.items()
    if variant in ("set", "delete"):
        return 1
    if variant == "insert":
        return len(body["values"])
    if variant == "insert_text":
        return len(body["text"])  # Python strings count Unicode scalar values
    if variant == "skip":
        return body["span"]
    return sum(r["len"] for r in body["ranges"])


def check_operation(op) -> None:
    """The rules of PROTOCOL.md "Operations" that need no state: a run covers
    at least one counter and never wraps, its own deps entry comes before it,
    the edit fits the entity type, ranges are non-empty and do not wrap."""
    o = op["operation"]
    ((variant, body),) = o["edit"].items()
    kind = "remove_field" if variant == "remove" and body["field"] is not None else variant
    if kind == "skip":
        # PROTOCOL.md "Subscriptions": a skip names the document "" and no deps.
        if op["entity_type"] != "document" or op["entity_id"] != "" or o["deps"]:
            raise SpecError("a skip names the document \"\" and has no deps")
    elif kind not in VALID_EDITS[op["entity_type"]]:
        raise SpecError(f"{variant} does not apply to a {op['entity_type']}")
    n = span(o["edit"])
    if not op["actor_id"]:
        raise SpecError("an empty actor id")
    if n == 0 or o["counter"] == 0 or o["counter"] + n - 1 > MAX_COUNTER:
        raise SpecError(f"an operation covering {n} counters from {o['counter']}")
    if o["deps"].get(op["actor_id"], 0) >= o["counter"]:
        raise SpecError("deps name the actor's own operation at or after this one")
    if any(c == 2**64 - 1 for c in o["deps"].values()):
        raise SpecError("a dependency counter of 2^64-1")
    for r in body.get("ranges", []):
        if r["len"] == 0 or r["counter"] == 0 or r["counter"] + r["len"] - 1 > MAX_COUNTER:
            raise SpecError(f"a removed range of {r['len']} from {r['counter']}")


def map_actors(op, f):
    """`op` with `f` applied to every actor it names, in the order of first
    mention (PROTOCOL.md, BATCHED_SYNC): its actor_id, the keys of its deps
    in their order, then its after and before elements' actors or its
    ranges' actors."""
    o = op["operation"]
    author = f(op["actor_id"])
    deps = {f(k): c for k, c in o["deps"].items()}
    ((variant, body),) = o["edit"].items()
    body = dict(body)
    for end in ("after", "before"):
        if body.get(end) is not None:
            body[end] = dict(body[end], actor=f(body[end]["actor"]))
    if "ranges" in body:
        body["ranges"] = [dict(r, actor=f(r["actor"])) for r in body["ranges"]]
    return dict(op, actor_id=author, operation=dict(o, deps=deps, edit={variant: body}))


def resolve_batch(batch):
    """BATCHED_SYNC's operations with their device ids (PROTOCOL.md,
    BATCHED_SYNC): every index inside the table, deps in the byte-wise order
    of the device ids, and the table exactly the device ids named, each
    once, in order of first mention."""
    actors, mentioned = batch["actors"], []

    def name(i):
        if i >= len(actors):
            raise SpecError(f"actor index {i} outside a table of {len(actors)}")
        if actors[i] not in mentioned:
            mentioned.append(actors[i])
        return actors[i]
    resolved = [map_actors(op, name) for op in batch["operations"]]
    for op in resolved:
        keys = [k.encode("utf-8") for k in op["operation"]["deps"]]
        if keys != sorted(keys):
            raise SpecError("deps are not in the byte-wise order of the device ids")
    if mentioned != actors:
        raise SpecError(f"the actor table {actors} is not the device ids named, in order: {mentioned}")
    return resolved


def to_batch(ops):
    """The BATCHED_SYNC payload object of operations written with device ids."""
    actors = []

    def ref(n):
        if n not in actors:
            actors.append(n)
        return actors.index(n)

    def deps_by_name(op):
        deps = sorted(op["operation"]["deps"].items(), key=lambda e: e[0].encode("utf-8"))
        return dict(op, operation=dict(op["operation"], deps=dict(deps)))
    return {"actors": actors, "operations": [map_actors(deps_by_name(op), ref) for op in ops]}


def operations_of(mtype: int, obj):
    if mtype == 0x0102:
        yield obj
    elif mtype == 0x0105:
        yield from resolve_batch(obj)


def device_id_of_spki(spki: bytes) -> str:
    """PROTOCOL.md "device_id": the first 20 bytes of SHA-256(spki), base32, shown form."""
    import base64
    import hashlib
    text = base64.b32encode(hashlib.sha256(spki).digest()[:20]).decode().lower().rstrip("=")
    return "-".join(text[i:i + 4] for i in range(0, 32, 4))


def check_revocation(r) -> None:
    """PROTOCOL.md "Revocation": the ids, the key is the signer's, the signature verifies."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_der_public_key
    for field in ("revoked", "signer"):
        if not is_shown_device_id(r[field]):
            raise SpecError(f"REVOCATION {field} {r[field]!r} is not a device id in its shown form")
    if r["revoked"] == r["signer"]:
        raise SpecError("a REVOCATION of its own signer")
    if device_id_of_spki(r["signer_key"]) != r["signer"]:
        raise SpecError("REVOCATION signer_key is not the signer's key")
    def raw_id(shown):
        import base64
        return base64.b32decode(shown.replace("-", "").upper())
    statement = (b"nomade/1 revocation\x00" + raw_id(r["revoked"]) + raw_id(r["signer"])
                 + struct.pack(">Qq", r["cutoff"], r["issued_at"]))
    if r["scheme"] != 0x0403:
        raise SpecError(f"this checker verifies ECDSA P-256 (0x0403) only, not 0x{r['scheme']:04x}")
    try:
        load_der_public_key(r["signer_key"]).verify(r["signature"], statement, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise SpecError("REVOCATION signature does not verify")


def check_identities(mtype: int, obj) -> None:
    """HELLO/HELLO_ACK name a valid device id; actor ids are in the shown form."""
    if mtype in (0x0001, 0x0002) and not is_device_id(obj["device_id"]):
        raise SpecError(f"device_id {obj['device_id']!r} is not a device id")
    if mtype == 0x0109:
        check_revocation(obj)
    if mtype == 0x0101 and "subscription" in obj:
        check_subscription(obj["subscription"])
    if mtype == 0x0201 and "end_before" in obj and obj["end_before"] <= obj.get("resume_from", 0):
        raise SpecError("ARTIFACT_REQUEST end_before must come after resume_from")
    if mtype == 0x0202 and "recipient_keys" in obj:
        keys = obj["recipient_keys"]
        if not 1 <= len(keys) <= MAX_RECIPIENT_KEYS:
            raise SpecError(f"ARTIFACT_METADATA has {len(keys)} recipient keys (1 to {MAX_RECIPIENT_KEYS})")
        if len({bytes(k["recipient"]) for k in keys}) != len(keys):
            raise SpecError("ARTIFACT_METADATA names a recipient twice")
    if mtype == 0x0201 and obj.get("metadata_only") is False:
        raise SpecError("ARTIFACT_REQUEST metadata_only is left out when false, never sent as false")
    for actor in actors_of(mtype, obj):
        if not is_shown_device_id(actor):
            raise SpecError(f"actor {actor!r} is not a device id in its shown form")
    for op in operations_of(mtype, obj):
        check_operation(op)


MAX_PATTERNS, MAX_PATTERN_LEN = 256, 256
MAX_RECIPIENT_KEYS = 64


def check_subscription(patterns) -> None:
    """PROTOCOL.md "Subscriptions": at most 256 patterns, each `type:id`,
    `type:prefix*` or `type:*`, at most 256 bytes, none twice."""
    if len(patterns) > MAX_PATTERNS:
        raise SpecError(f"a subscription of {len(patterns)} patterns")
    if len(set(patterns)) != len(patterns):
        raise SpecError("a subscription naming a pattern twice")
    for p in patterns:
        kind, sep, rest = p.partition(":")
        if not sep or kind not in ("document", "conversation") or not rest:
            raise SpecError(f"subscription pattern {p!r} is not type:id, type:prefix* or type:*")
        if "*" in rest[:-1]:
            raise SpecError(f"subscription pattern {p!r} has a * before its end")
        if len(p.encode("utf-8")) > MAX_PATTERN_LEN:
            raise SpecError(f"a subscription pattern of {len(p.encode('utf-8'))} bytes")


def expect_rejected(frame: bytes, what: str, exc=SpecError) -> None:
    try:
        decode_frame(frame)
    except exc:
        return
    except SpecError as e:
        raise SpecError(f"{what}: rejected for the wrong reason: {e}")
    raise SpecError(f"{what}: accepted, but must be rejected")


def check_vector(v) -> None:
    if not isinstance(v, dict) or not {"name", "message_type", "frame_hex"} <= set(v):
        raise SpecError(f"vector must be an object with name, message_type, frame_hex: {v!r:.100}")
    vtype = v["message_type"]
    if type(vtype) is not int:
        raise SpecError(f"message_type must be a JSON number, got {vtype!r}")
    if type(v["frame_hex"]) is not str or v["frame_hex"] != v["frame_hex"].lower():
        raise SpecError("frame_hex must be a lower-case hex string")
    frame = bytes.fromhex(v["frame_hex"])
    if len(frame) < HEADER_LEN:
        raise SpecError(f"frame of {len(frame)} bytes is shorter than the header")
    version, mtype, message_id, timestamp, length = HEADER.unpack_from(frame)
    if version != PROTOCOL_VERSION:
        raise SpecError(f"version {version}, expected {PROTOCOL_VERSION}")
    if mtype != vtype:
        raise SpecError(f"header message_type 0x{mtype:04x} but the vector says 0x{vtype:04x}")
    if mtype & ~COMPRESSED not in MESSAGES:
        raise SpecError(f"unknown message type 0x{mtype:04x}")
    if HEADER_LEN + length + CHECKSUM_LEN != len(frame):
        raise SpecError(f"payload_length {length} does not match a frame of {len(frame)} bytes")
    got_type, got_id, got_ts, payload, obj = decode_frame(frame)
    check_identities(got_type & ~COMPRESSED, obj)
    rebuilt = build_frame(got_type, got_id, got_ts, payload)
    if rebuilt != frame:
        raise SpecError("the frame rebuilt from its parts differs from frame_hex")

    # Corrupted copies must be rejected.
    flipped = bytearray(frame)
    flipped[HEADER_LEN + length // 2] ^= 0x01
    expect_rejected(bytes(flipped), "a frame with one payload byte flipped", ChecksumError)
    bad_sum = bytearray(frame)
    bad_sum[-1] ^= 0x80
    expect_rejected(bytes(bad_sum), "a frame with one checksum byte flipped", ChecksumError)
    expect_rejected(frame[:-1], "a truncated frame")
    expect_rejected(frame + b"\x00", "a frame followed by a stray byte")
    expect_rejected(b"\x02" + frame[1:], "a frame with version 2")
    expect_rejected(frame[:1] + b"\x7f\xff" + frame[3:], "a frame with message type 0x7fff")
    # The same payload with one junk byte appended (checksum fixed up): trailing bytes.
    expect_rejected(build_frame(got_type, got_id, got_ts, payload + b"\xc0"), "a payload with a trailing byte")


def run(path: str) -> int:
    vectors = load_json(path)
    if vectors is None:
        return 1
    if not isinstance(vectors, list) or not vectors:
        print(f"FAIL: {path} must hold a non-empty JSON array", file=sys.stderr)
        return 1
    failures = 0
    seen_types = set()
    seen_names = set()
    for i, v in enumerate(vectors):
        name = v.get("name", f"#{i}") if isinstance(v, dict) else f"#{i}"
        try:
            if name in seen_names:
                raise SpecError("duplicate vector name")
            seen_names.add(name)
            check_vector(v)
            seen_types.add(v["message_type"] & ~COMPRESSED)
            print(f"ok {name}")
        except (SpecError, ValueError, KeyError, TypeError, struct.error) as e:
            failures += 1
            print(f"FAIL {name}: {e}", file=sys.stderr)
    try:
        check_worked_example()
        check_discovery_tag()
        self_test_rejections()
        print("ok spec negative cases and worked example")
    except (SpecError, AssertionError) as e:
        failures += 1
        print(f"FAIL spec self-check: {e}", file=sys.stderr)
    missing = sorted(set(MESSAGES) - seen_types)
    if missing:
        failures += 1
        names = ", ".join(f"{MESSAGES[c][1]} (0x{c:04x})" for c in missing)
        print(f"FAIL: no vector for {names}", file=sys.stderr)
    if failures:
        print(f"{failures} failure(s) in {path}", file=sys.stderr)
        return 1
    print(f"all {len(vectors)} vectors ok, {len(seen_types)} message types covered")
    return 0


# --- self test: frames built by hand from the spec ------------------------------

# PROTOCOL.md "Test vectors", worked example.
WORKED_EXAMPLE_HEX = (
    "01" "0301" "07070707070707070707070707070707" "0000018bcfe56800" "00000035"
    "83a974696d657374616d70cf0000018bcfe56800ad626174746572795f6c6576656c50"
    "ac636f6e6e6563746976697479a477696669"
    "b873389f25bc5ebb83a7272487e932b0e7432b9b913f671b483ac06ab1d13fdf"
)


def self_test_vectors():
    ts = 1_700_000_000_000
    h = lambda n: bytes([n]) * 32  # noqa: E731
    mid = lambda n: bytes((n * 16 + i) & 0xFF for i in range(16))  # noqa: E731
    laptop, phone = "cvml-efwx-x7jt-253v-yrk5-ma4a-2orm-6ypr", "m7ae-dq3r-2x2k-fh7p-lwzc-u5tn-6jgb-vals"
    vv = {laptop: 41, phone: 7}
    set_op = {
        "entity_id": "notes/todo",
        "entity_type": "document",
        "operation": {"counter": 42, "deps": vv, "edit": {"set": {"key": "title", "value": "Groceries"}}},
        "timestamp": ts,
        "actor_id": laptop,
    }
    fields = {"done": False, "n": -3, "score": 0.5}
    msgs = [
        ("hello", 0x0001, {"device_id": laptop, "device_name": "Ana's laptop", "protocol_version": 1,
                           "capabilities": ["crdt-sync", "artifact-transfer"], "sync_state_hash": h(0x11)}),
        ("hello_ack", 0x0002, {"device_id": phone.replace("-", ""), "device_name": "Ana's phone", "protocol_version": 1,
                               "capabilities": ["crdt-sync"], "sync_state_hash": h(0x22), "sync_required": True}),
        ("hello_ack_bulk", 0x0002, {"device_id": phone.replace("-", ""), "device_name": "Ana's phone", "protocol_version": 1,
                                    "capabilities": ["crdt-sync", "bulk"], "sync_state_hash": h(0x22), "sync_required": False,
                                    "bulk_port": 52001}),
        ("sync_request_full", 0x0101, {"entity_types": [], "since_timestamp": None, "full_sync": True}),
        ("sync_request_incremental", 0x0101, {"entity_types": ["document", "conversation"],
                                              "since_timestamp": ts - 60_000, "full_sync": False,
                                              "version_vector": vv}),
        ("sync_operation_set", 0x0102, set_op),
        ("sync_operation_insert", 0x0102, {
            "entity_id": "chat/family", "entity_type": "conversation",
            "operation": {"counter": 9, "deps": {phone: 8}, "edit": {"insert": {
                "after": {"actor": laptop, "counter": 3},
                "values": ["see you at 8", b"\x00\x01\x02", None, [1, 300], {"a": -40000, "b": 2**63 - 1}]}}},
            "timestamp": -1, "actor_id": phone}),
        ("sync_operation_insert_text", 0x0102, {
            "entity_id": "notes/todo", "entity_type": "document",
            "operation": {"counter": 44, "deps": {laptop: 43}, "edit": {"insert_text": {
                "field": "body", "after": None, "text": "h\u00e9llo \U0001F44B"}}},
            "timestamp": ts, "actor_id": laptop}),
        ("sync_operation_remove", 0x0102, {
            "entity_id": "notes/todo", "entity_type": "document",
            "operation": {"counter": 51, "deps": {laptop: 50}, "edit": {"remove": {
                "field": "body", "ranges": [{"actor": laptop, "counter": 45, "len": 2}]}}},
            "timestamp": ts, "actor_id": laptop}),
        ("sync_complete", 0x0103, {"entity_types": ["document"], "operations_count": 1234, "new_state_hash": h(0x33)}),
        ("ack", 0x0104, {"message_ids": [mid(200), mid(201)]}),
        ("batched_sync", 0x0105, to_batch([set_op, dict(set_op, operation={
            "counter": 43, "deps": {laptop: 42, phone: 7}, "edit": {"delete": {"key": "title"}}})])),
        ("batched_sync_text", 0x0105, to_batch([
            dict(set_op, actor_id=phone, operation={"counter": 9, "deps": {laptop: 43, phone: 8},
                 "edit": {"insert_text": {"field": "body", "after": {"actor": laptop, "counter": 40},
                                          "text": "abc"}}}),
            dict(set_op, operation={"counter": 44, "deps": {laptop: 43, phone: 11},
                 "edit": {"remove": {"field": "body", "ranges": [{"actor": phone, "counter": 9, "len": 3}]}}}),
        ])),
        ("delta_sync", 0x0106, {"entity_id": "notes/todo", "changed_fields": fields, "actor_id": laptop,
                                "first_counter": 50, "deps": {laptop: 49, phone: 7}, "timestamp": ts}),
        ("sync_snapshot", 0x0107, {"total_len": 70_000, "offset": 65_536,
                                   "data": b"\x85\xa7version\x03 the snapshot's last bytes"}),
        ("have", 0x0108, {"version_vector": {laptop: 44}}),
        ("have_direct", 0x0108, {"version_vector": {}, "direct_added": [laptop], "direct_removed": [phone]}),
        ("revocation", 0x0109, {
            "revoked": phone, "cutoff": 41, "issued_at": 1_764_000_000_000,
            "signer": "nf2o-jmkl-m4qs-y3fv-27cq-lguv-qpki-26c6",
            "signer_key": bytes.fromhex(
                "3059301306072a8648ce3d020106082a8648ce3d03010703420004c115d57e26b01b9295db991885889982"
                "ced638bd4a939768c2e59ce7301366a2a2fbf297f267451e9edf9dda0bf8bd4d90790ffc66327df65a4503"
                "e7377b865a"),
            "scheme": 0x0403,
            "signature": bytes.fromhex(
                "3045022100cabe58bae72928fb84cc6ce10a7bd2a83cac082e408956b04222b7cb363529ab02205755872b"
                "ee3b701503fdcba2c5b2983ba1b289671903cf250041cfc73da6364e")}),
        ("artifact_request", 0x0201, {"artifact_id": h(0xA1), "priority": 128}),
        ("artifact_request_resume", 0x0201, {"artifact_id": h(0xA1), "priority": 255, "resume_from": 17}),
        ("artifact_request_sealed", 0x0201, {"artifact_id": h(0xA1), "priority": 128, "resume_from": 2,
                                             "sealed_for": h(0xB5)}),
        ("artifact_request_metadata", 0x0201, {"artifact_id": h(0xA1), "priority": 0, "metadata_only": True}),
        ("artifact_metadata", 0x0202, {"artifact_id": h(0xA1), "size": 200_000, "chunk_count": 4,
                                       "mime_type": "image/jpeg", "encrypted": True}),
        ("artifact_metadata_sealed", 0x0202, {"artifact_id": h(0xA1), "size": 200_000, "chunk_count": 4,
                                              "mime_type": None, "encrypted": True,
                                              "data_key": {"recipient": h(0xB5), "ephemeral": h(0xE0),
                                                           "nonce": b"\x11" * 12, "sealed": b"\x5e" * 48}}),
        ("artifact_chunk", 0x0203, {"artifact_id": h(0xA1), "chunk_index": 3,
                                    "chunk_data": b"last bytes of the photo", "is_final": True}),
        ("artifact_chunk_sealed", 0x0203, {"artifact_id": h(0xA1), "chunk_index": 1,
                                           "chunk_data": b"\x8a\x01\x7f ciphertext of the same length",
                                           "is_final": False, "chunk_hash": h(0xC1), "seal": b"\x2c" * 28}),
        ("artifact_chunk_full", 0x0203, {"artifact_id": h(0xA1), "chunk_index": 0,
                                         "chunk_data": bytes(i % 251 for i in range(MAX_CHUNK_DATA)),
                                         "is_final": False, "chunk_hash": h(0xC0)}),
        ("artifact_complete", 0x0204, {"artifact_id": h(0xA1), "received_hash": h(0xA1)}),
        ("heartbeat_unknown_battery", 0x0301, {"timestamp": ts, "battery_level": None, "connectivity": "ethernet"}),
        ("presence_update", 0x0302, {"status": "busy", "message": "in a meeting"}),
        ("error", 0x0401, {"error_code": 3, "error_message": "not held here", "related_message_id": mid(15)}),
        ("error_no_related", 0x0401, {"error_code": 7, "error_message": "slow down", "related_message_id": None}),
        ("relay_request", 0x0501, {"target": phone}),
        ("relay_offer", 0x0502, {"source": laptop}),
        ("relay_accept", 0x0503, {}),
        ("error_unreachable", 0x0401, {"error_code": 8, "error_message": "no direct connection",
                                       "related_message_id": mid(40)}),
    ]
    out = [{"name": "heartbeat_worked_example", "message_type": 0x0301, "frame_hex": WORKED_EXAMPLE_HEX}]
    for n, (name, code, obj) in enumerate(msgs, start=1):
        payload = msgpack.packb(obj, use_bin_type=True)
        frame = build_frame(code, mid(n), ts, payload)
        out.append({"name": name, "message_type": code, "frame_hex": frame.hex()})
    return out


def self_test_rejections():
    """Payloads that are valid MessagePack but not valid Nomade: each must be rejected."""
    ts = 1_700_000_000_000
    hb = {"timestamp": ts, "battery_level": 80, "connectivity": "wifi"}
    cases = [
        ("heartbeat as an array", 0x0301, msgpack.packb([ts, 80, "wifi"])),
        ("heartbeat fields out of order", 0x0301,
         msgpack.packb({"battery_level": 80, "timestamp": ts, "connectivity": "wifi"})),
        ("heartbeat missing a nil seed field", 0x0301, msgpack.packb({"timestamp": ts, "connectivity": "wifi"})),
        ("heartbeat with an unknown field", 0x0301, msgpack.packb(dict(hb, mood="ok"))),
        ("heartbeat with a bool battery", 0x0301, msgpack.packb(dict(hb, battery_level=True))),
        ("heartbeat with uint16 80", 0x0301,
         bytes.fromhex("83a974696d657374616d70cf0000018bcfe56800ad626174746572795f6c6576656c"
                       "cd0050ac636f6e6e6563746976697479a477696669")),
        ("heartbeat with bad connectivity", 0x0301, msgpack.packb(dict(hb, connectivity="Wifi"))),
        ("artifact_request with resume_from nil", 0x0201,
         msgpack.packb({"artifact_id": b"\xa1" * 32, "priority": 1, "resume_from": None}, use_bin_type=True)),
        ("artifact_request with a str id", 0x0201,
         msgpack.packb({"artifact_id": "a" * 32, "priority": 1}, use_bin_type=True)),
        ("artifact_request with a 31-byte id", 0x0201,
         msgpack.packb({"artifact_id": b"\xa1" * 31, "priority": 1}, use_bin_type=True)),
        ("delta_sync with unsorted fields", 0x0106,
         msgpack.packb({"entity_id": "d", "changed_fields": {"b": 1, "a": 2}, "actor_id": "x",
                        "first_counter": 1, "deps": {}, "timestamp": 0})),
        ("delta_sync with a float32 value", 0x0106,
         msgpack.packb({"entity_id": "d", "changed_fields": {"a": 0.5}, "actor_id": "x",
                        "first_counter": 1, "deps": {}, "timestamp": 0}, use_single_float=True)),
        ("delta_sync with a uint64 above i64::MAX", 0x0106,
         msgpack.packb({"entity_id": "d", "changed_fields": {"a": 2**63}, "actor_id": "x",
                        "first_counter": 1, "deps": {}, "timestamp": 0})),
        ("delta_sync without its extension fields", 0x0106,
         msgpack.packb({"entity_id": "d", "changed_fields": {}})),
        ("presence_update with trailing byte", 0x0302,
         msgpack.packb({"status": "online", "message": None}) + b"\xc0"),
        ("error with a negative code", 0x0401,
         msgpack.packb({"error_code": -1, "error_message": "", "related_message_id": None})),
        ("deep value", 0x0106,
         msgpack.packb({"entity_id": "d", "changed_fields": {"a": _nest(30)}, "actor_id": "x",
                        "first_counter": 1, "deps": {}, "timestamp": 0})),
        ("edit with two keys", 0x0102,
         msgpack.packb({"entity_id": "e", "entity_type": "document", "operation": {
             "counter": 1, "deps": {}, "edit": {"delete": {"key": "k"}, "set": {"key": "k", "value": 1}}},
             "timestamp": 0, "actor_id": "a"})),
    ]
    for what, code, payload in cases:
        expect_rejected(build_frame(code, b"\x00" * 16, ts, payload), what)
    # Depth: 22 nested arrays inside DELTA_SYNC's changed_fields sit at levels 3..24 -> rejected;
    # 21 -> the deepest is level 23 -> accepted.
    for n, ok in ((21, True), (22, False)):
        payload = msgpack.packb({"entity_id": "d", "changed_fields": {"a": _nest(n)}, "actor_id": "x",
                                 "first_counter": 1, "deps": {}, "timestamp": 0})
        frame = build_frame(0x0106, b"\x00" * 16, ts, payload)
        if ok:
            decode_frame(frame)
        else:
            expect_rejected(frame, f"{n} nested arrays in changed_fields")
    # Device ids outside the base32 alphabet (0, 1, 8, 9), and actors not in the shown form.
    hello = {"device_id": "k3x9-2mfa-q8d1-7pzr-c4hn-wt6e-b5ys-0gvu", "device_name": "", "protocol_version": 1,
             "capabilities": [], "sync_state_hash": b"\x00" * 32}
    delta = {"entity_id": "d", "changed_fields": {}, "actor_id": "cvmlefwxx7jt253vyrk5ma4a2orm6ypr",
             "first_counter": 1, "deps": {}, "timestamp": 0}
    laptop = "cvml-efwx-x7jt-253v-yrk5-ma4a-2orm-6ypr"

    def op(entity_type, counter, deps, edit):
        return {"entity_id": "d", "entity_type": entity_type,
                "operation": {"counter": counter, "deps": deps, "edit": edit},
                "timestamp": 0, "actor_id": laptop}
    text = lambda t: {"insert_text": {"field": "t", "after": None, "text": t}}  # noqa: E731
    remove = lambda c, n: {"remove": {"field": None, "ranges": [{"actor": laptop, "counter": c, "len": n}]}}  # noqa: E731
    bad_ops = (
        ("an empty run of text", op("document", 1, {}, text(""))),
        ("an empty insert", op("conversation", 1, {}, {"insert": {"after": None, "values": []}})),
        ("a run whose counters wrap", op("document", 2**64 - 3, {}, text("abc"))),
        ("counter 0", op("document", 0, {}, text("a"))),
        ("an own deps entry at the counter", op("document", 5, {laptop: 5}, text("a"))),
        ("an empty range", op("conversation", 1, {}, remove(1, 0))),
        ("a range that wraps", op("conversation", 1, {}, remove(2**64 - 2, 2))),
        ("insert on a document", op("document", 1, {}, {"insert": {"after": None, "values": [1]}})),
        ("text on a conversation", op("conversation", 1, {}, text("a"))),
    )
    for what, obj in bad_ops:
        try:
            check_identities(0x0102, obj)
        except SpecError:
            continue
        raise SpecError(f"{what}: accepted, but must be rejected")
    check_identities(0x0102, op("document", 5, {laptop: 2}, text("ab")))
    # BATCHED_SYNC's table: exactly the device ids named, in order of first mention.
    phone = "m7ae-dq3r-2x2k-fh7p-lwzc-u5tn-6jgb-vals"
    two = [op("document", 5, {laptop: 2, phone: 3}, text("ab"))]
    good = to_batch(two)
    check_identities(0x0105, good)
    for what, batch in (
        ("a table out of order", dict(good, actors=list(reversed(good["actors"])))),
        ("a table with an extra device id", dict(good, actors=good["actors"] + ["x"])),
        ("an index outside the table", dict(good, actors=good["actors"][:1])),
    ):
        try:
            check_identities(0x0105, batch)
        except SpecError:
            continue
        raise SpecError(f"{what}: accepted, but must be rejected")
    wrap = {"recipient": b"\xb1" * 32, "ephemeral": b"\x21" * 32, "nonce": b"\x21" * 12,
            "sealed": b"\x21" * 48}
    meta = {"artifact_id": b"\xa3" * 32, "size": 1, "chunk_count": 1, "mime_type": None, "encrypted": True}
    check_identities(0x0202, dict(meta, recipient_keys=[wrap]))
    for what, code, obj in (("a HELLO with digits 0, 1, 8, 9 in its device id", 0x0001, hello),
                            ("an actor id without its dashes", 0x0106, delta),
                            ("ARTIFACT_METADATA naming a recipient twice", 0x0202,
                             dict(meta, recipient_keys=[wrap, wrap])),
                            ("ARTIFACT_METADATA with no recipient key", 0x0202, dict(meta, recipient_keys=[])),
                            ("ARTIFACT_METADATA with 65 recipient keys", 0x0202,
                             dict(meta, recipient_keys=[dict(wrap, recipient=bytes([i]) * 32)
                                                        for i in range(65)]))):
        try:
            check_identities(code, obj)
        except SpecError:
            continue
        raise SpecError(f"{what}: accepted, but must be rejected")
    # payload_length above the limit: rejected from the header alone.
    big = HEADER.pack(1, 0x0203, b"\x00" * 16, ts, MAX_PAYLOAD + 1)
    expect_rejected(big, "payload_length above the limit")


# --- PROTOCOL.md "State hash" ---------------------------------------------------

# Entities are hashed documents first, then conversations (not by type name).
ENTITY_TYPE_ORDER = {"document": 0, "conversation": 1}


def canonical_value_bytes(hex_str: str, where: str) -> bytes:
    b = bytes.fromhex(hex_str)
    v = msgpack.unpackb(b, raw=False, strict_map_key=True)
    check_value(v, where, 1)
    if msgpack.packb(v, use_bin_type=True) != b:
        raise SpecError(f"{where}: value not in canonical encoding")
    return b


def state_hash(state) -> bytes:
    """sync_state_hash of a state written out as in state_hash_vectors.json,
    computed by the rules of PROTOCOL.md alone: this function sorts whatever
    the rules sort, and takes only the sequence order from the file."""
    h = blake3.blake3()
    h.update(b"nomade-state-v2")
    u64 = lambda n: h.update(struct.pack(">Q", n))  # noqa: E731

    def text(x: str):
        b = x.encode("utf-8")
        u64(len(b))
        h.update(b)

    def raw(b: bytes):
        u64(len(b))
        h.update(b)

    def element_id(el):
        text(el["actor"])
        u64(el["counter"])

    entities = sorted(state["entities"],
                      key=lambda e: (ENTITY_TYPE_ORDER[e["entity_type"]], e["entity_id"].encode("utf-8")))
    for e in entities:
        where = f"{e['entity_type']}:{e['entity_id']}"
        text(e["entity_type"])
        text(e["entity_id"])
        if e["entity_type"] == "document":
            fields = sorted((f for f in e["fields"] if f["values"]), key=lambda f: f["key"].encode("utf-8"))
            u64(len(fields))
            for f in fields:
                text(f["key"])
                values = sorted(f["values"], key=lambda v: (v["lamport"], v["actor"].encode("utf-8")), reverse=True)
                u64(len(values))
                for v in values:
                    u64(v["lamport"])
                    text(v["actor"])
                    raw(canonical_value_bytes(v["value_msgpack_hex"], f"{where}.{f['key']}"))
            # Every text field counts, also one whose characters were all removed.
            texts = sorted(e["texts"], key=lambda t: t["field"].encode("utf-8"))
            u64(len(texts))
            for t in texts:
                text(t["field"])
                u64(len(t["chars"]))
                for c in t["chars"]:
                    element_id(c)
                    u64(c["content"])
        else:
            u64(len(e["items"]))
            for item in e["items"]:
                element_id(item)
                raw(canonical_value_bytes(item["content"], f"{where} item"))
    return h.digest()


def snapshot_state(b: bytes):
    """The state a snapshot holds (PROTOCOL.md "Snapshots"), written out as
    in state_hash_vectors.json: decoded by the document's rules alone."""
    snap = msgpack.unpackb(b, raw=False, strict_map_key=False)
    if not isinstance(snap, dict) or set(snap) != {"version", "actors", "version_vector", "entities"}:
        raise SpecError("a snapshot is a map of version, actors, version_vector, entities")
    if snap["version"] != 5:
        raise SpecError(f"snapshot version {snap['version']}")
    actors = snap["actors"]
    if len(set(actors)) != len(actors):
        raise SpecError("the snapshot's actor table repeats a device id")
    vv = snap["version_vector"]

    def actor(i, counter):
        if not (0 <= i < len(actors)):
            raise SpecError(f"actor index {i} outside the table")
        name = actors[i]
        if not (1 <= counter <= vv.get(name, 0)):
            raise SpecError(f"counter {counter} of {name} beyond the version vector")
        return name

    def visible(runs, split):
        out = []
        for a, counter, origin, right, removed, values in runs:
            for ref in (origin, right):
                if ref is not None:
                    actor(*ref)
            if removed:
                if len(values):
                    raise SpecError("a removed run lists values")
                actor(a, counter)
                actor(a, counter + removed - 1)
                continue
            for k, value in enumerate(split(values)):
                out.append((actor(a, counter + k), counter + k, value))
        return out

    entities = []
    for entity_type, entity_id, entity_vv, fields, texts, items in snap["entities"]:
        for name, c in entity_vv.items():
            if c > vv.get(name, 0):
                raise SpecError(f"{entity_id}: entity version vector beyond the snapshot's")
        e = {"entity_type": entity_type, "entity_id": entity_id}
        if entity_type == "document":
            if items:
                raise SpecError(f"{entity_id}: a document with items")
            e["fields"] = [{"key": key, "values": [
                {"actor": actor(a, c), "lamport": lamport,
                 "value_msgpack_hex": msgpack.packb(value, use_bin_type=True).hex()}
                for a, c, lamport, value in values]} for key, values in fields]
            e["texts"] = [{"field": field, "chars": [
                {"actor": n, "counter": c, "content": ord(ch)} for n, c, ch in visible(runs, list)]}
                for field, runs in texts]
        elif entity_type == "conversation":
            if fields or texts:
                raise SpecError(f"{entity_id}: a conversation with fields or texts")
            e["items"] = [{"actor": n, "counter": c, "content": msgpack.packb(v, use_bin_type=True).hex()}
                          for n, c, v in visible(items, list)]
        else:
            raise SpecError(f"entity type {entity_type!r}")
        entities.append(e)
    return {"entities": entities}


def load_json(path: str):
    """The JSON in `path`, or None (and a FAIL line) when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        print(f"FAIL: cannot read {path}: {e}", file=sys.stderr)
        return None


def place_element(elements, e) -> None:
    """Places the element `e` (a dict: id, origin, right, value, removed) in
    `elements`, the list of all elements of a sequence, by the rule of
    PROTOCOL.md "Sequences" (YATA), written from that text alone."""
    ids = [x["id"] for x in elements]
    l, r = e["origin"], e["right"]
    for ref in (l, r):
        if ref is not None and ref not in ids:
            raise SpecError(f"an insertion refers to the unknown element {ref}")
    i = ids.index(l) + 1 if l is not None else 0
    left = i
    passed, conflicting = set(), set()
    while i < len(elements):
        o = elements[i]
        if r is not None and o["id"] == r:
            break
        passed.add(o["id"])
        conflicting.add(o["id"])
        if o["origin"] == l:
            if o["id"][0].encode() < e["id"][0].encode():
                left = i + 1
                conflicting.clear()
            elif o["right"] == r:
                break
        elif o["origin"] is not None and o["origin"] in passed:
            if o["origin"] not in conflicting:
                left = i + 1
                conflicting.clear()
        else:
            break
        i += 1
    elements.insert(left, e)


def replay_sequences(ops):
    """Applies the sequence edits of `ops` (in their order, a causal one) to
    lists of all elements, one element at a time as "Runs" defines them.
    Returns the visible elements of every sequence, by (entity_type,
    entity_id, field or None): [(actor, counter, value)]."""
    def eid(el):
        return None if el is None else (el["actor"], el["counter"])
    sequences = {}
    for op in ops:
        ((variant, body),) = op["operation"]["edit"].items()
        if variant not in ("insert", "insert_text", "remove"):
            continue
        elements = sequences.setdefault((op["entity_type"], op["entity_id"], body.get("field")), [])
        if variant == "remove":
            for rng in body["ranges"]:
                for k in range(rng["len"]):
                    target = (rng["actor"], rng["counter"] + k)
                    found = [x for x in elements if x["id"] == target]
                    if not found:
                        raise SpecError(f"a removal of the unknown element {target}")
                    found[0]["removed"] = True
            continue
        values = list(body["text"]) if variant == "insert_text" else body["values"]
        origin, right = eid(body["after"]), eid(body["before"])
        for k, value in enumerate(values):
            e = {"id": (op["actor_id"], op["operation"]["counter"] + k), "origin": origin,
                 "right": right, "value": value, "removed": False}
            place_element(elements, e)
            origin = e["id"]
    return {key: [(x["id"][0], x["id"][1], x["value"]) for x in elements if not x["removed"]]
            for key, elements in sequences.items()}


def check_replayed_sequences(ops, state) -> None:
    """The sequences of `state` are exactly what replaying `ops` with the
    placement rule gives: texts character for character, conversations item
    for item (by id)."""
    replayed = replay_sequences(ops)
    for e in state["entities"]:
        if e["entity_type"] == "document":
            for t in e["texts"]:
                want = [(c["actor"], c["counter"], chr(c["content"])) for c in t["chars"]]
                got = replayed.get(("document", e["entity_id"], t["field"]), [])
                if got != want:
                    raise SpecError(f"{e['entity_id']}.{t['field']}: replayed "
                                    f"{''.join(x[2] for x in got)!r}, the state has "
                                    f"{''.join(x[2] for x in want)!r}")
        else:
            want = [(i["actor"], i["counter"]) for i in e["items"]]
            got = [(a, c) for a, c, _ in replayed.get(("conversation", e["entity_id"], None), [])]
            if got != want:
                raise SpecError(f"{e['entity_id']}: replayed items {got}, the state has {want}")


def run_state_hash(path: str) -> int:
    vectors = load_json(path)
    if vectors is None:
        return 1
    failures = 0
    for v in vectors:
        name = v.get("name", "?")
        try:
            held = set()
            ops = []
            for fh in v["operations_frame_hex"]:
                mtype, _, _, _, obj = decode_frame(bytes.fromhex(fh))
                if mtype != 0x0102:
                    raise SpecError(f"operation frame of type 0x{mtype:04x}")
                check_identities(mtype, obj)
                held.add((obj["entity_type"], obj["entity_id"]))
                ops.append(obj)
            check_replayed_sequences(ops, v["state"])
            listed = {(e["entity_type"], e["entity_id"]) for e in v["state"]["entities"]}
            if listed != held:
                raise SpecError(f"the state lists {sorted(listed)}, the operations create {sorted(held)}")
            got = state_hash(v["state"]).hex()
            if got != v["state_hash"]:
                raise SpecError(f"state hash {got}, the vector says {v['state_hash']}")
            from_snapshot = state_hash(snapshot_state(bytes.fromhex(v["snapshot_hex"]))).hex()
            if from_snapshot != v["state_hash"]:
                raise SpecError(f"the snapshot's state hashes to {from_snapshot}, the vector says {v['state_hash']}")
            print(f"ok state hash {name}")
        except (SpecError, ValueError, KeyError, TypeError, struct.error) as e:
            failures += 1
            print(f"FAIL state hash {name}: {e}", file=sys.stderr)
    if failures:
        return 1
    print(f"all {len(vectors)} state-hash vectors ok")
    return 0


def _nest(n):
    v = 0
    for _ in range(n):
        v = [v]
    return v


def check_worked_example() -> None:
    """The HEARTBEAT walked through in PROTOCOL.md, rebuilt from its parts."""
    ex = bytes.fromhex(WORKED_EXAMPLE_HEX)
    payload = msgpack.packb({"timestamp": 1_700_000_000_000, "battery_level": 80, "connectivity": "wifi"},
                            use_bin_type=True)
    if build_frame(0x0301, b"\x07" * 16, 1_700_000_000_000, payload) != ex:
        raise SpecError("the worked example of PROTOCOL.md does not rebuild")
    decode_frame(ex)


def check_discovery_tag() -> None:
    """PROTOCOL.md "Local discovery": the vector's tag, derived from the text."""
    import base64
    raw = base64.b32decode("cvml-efwx-x7jt-253v-yrk5-ma4a-2orm-6ypr".replace("-", "").upper())
    period = 1_774_800_000_000 // 3_600_000
    tag = blake3.blake3(raw + struct.pack(">Q", period),
                        derive_key_context="nomade/1 local discovery tag").digest()[:16].hex()
    if (period, tag) != (493_000, "c45b4d0363ae0cf445e7f8de55b43aad"):
        raise SpecError(f"the local discovery tag vector gives {tag} in period {period}")


def self_test() -> int:
    """Runs the checker on vectors built here from the spec (no vectors.json needed)."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "vectors.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self_test_vectors(), f)
        return run(path)


def main(argv) -> int:
    if len(argv) > 1 and argv[1] == "--self-test":
        return self_test()
    if len(argv) > 2 and argv[1] == "--state-hash":
        return run_state_hash(argv[2])
    if len(argv) > 1:
        path = argv[1]
    else:
        root = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
        path = os.path.join(root, "nomade-wire", "tests", "vectors.json")
        if not os.path.exists(path):
            path = os.path.join("nomade-wire", "tests", "vectors.json")
    return run(path)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
