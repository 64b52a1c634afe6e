"""The pickle scan: a pickle from a weights file is checked opcode by opcode before anything
unpickles it.

`scan_pickle(BoundedReader(f, MAX_PICKLE_BYTES))` returns the length of the pickle at `f`'s position
once `PickleScan` has accepted every opcode; it raises `Refused` for content that a state dict never
needs (the caller adds the file's name) and `PickleTooLong` for a declared length past the limit.
Only the opcodes a state dict pickle uses are allowed, and the result must stay within
`MAX_PICKLE_ITEMS` objects (counted along every path) and `MAX_NESTING` levels (limits in
`p3d_keras.weights.untrusted`). No object of the pickle is built.
"""
import _compat_pickle
import pickle
import pickletools

from p3d_keras.weights.untrusted import MAX_NESTING, MAX_PICKLE_ITEMS

# The one global a pickle may call with arguments other than torch's rebuild functions.
ORDERED_DICT = ("collections", "OrderedDict")


class Refused(Exception):
    """Raised for content that is refused as unsafe; the reader re-raises it as an
    UnsafeCheckpointError naming the file."""


def python3_name(module, name):
    """Python 2 names (protocol 2 pickles write __builtin__.eval), mapped as pickle itself does."""
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class BoundedReader:
    """A binary file, read from its current position, that refuses to read past `limit` bytes:
    a length a pickle declares is checked before anything is allocated for it."""

    def __init__(self, file, limit):
        self.file, self.left, self.start = file, limit, file.tell()

    def read(self, size):
        if size > self.left:
            raise PickleTooLong(size)
        data = self.file.read(size)
        self.left -= len(data)
        return data

    def readline(self):
        line = self.file.readline(self.left + 1)
        if len(line) > self.left:
            raise PickleTooLong(len(line))
        self.left -= len(line)
        return line

    def tell(self):
        return self.file.tell() - self.start


class PickleTooLong(Exception):
    """A pickle declares a payload or a line beyond `MAX_PICKLE_BYTES`."""


class _Node:
    """One object of a scanned pickle: its kind ("atom", "list", "dict", "set", "tuple",
    "frozenset", "global", "odict" (an OrderedDict), "call", "storage"), the objects it
    holds, and for atoms and globals their value."""

    __slots__ = ("kind", "items", "value")

    def __init__(self, kind, items=(), value=None):
        self.kind, self.items, self.value = kind, list(items), value


_ATOM_OPS = {"NONE", "NEWTRUE", "NEWFALSE", "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4",
             "FLOAT", "BINFLOAT", "STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES",
             "BINBYTES8", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
_CONSTRUCTORS = ("INST", "OBJ", "NEWOBJ", "NEWOBJ_EX")  # object construction, refused with the class named
_MAX_INT_BITS = 512  # a state dict's numbers are int64; torch's legacy magic number has 81 bits
_HASHED_KINDS = ("atom",)  # what may be a dict key or a set item: hashing it costs its length


class PickleScan:
    """Checks one pickle opcode by opcode, without building any of its objects.

    Only the opcodes that a state dict pickle uses are allowed (no object construction by NEWOBJ,
    INST, OBJ or the copyreg extensions); dict keys and set items must be strings or numbers; a
    memo index must be the next free one or an earlier one; APPEND, SETITEM and BUILD must apply to
    a list, a dict and an OrderedDict. Opcodes, objects and container entries together are counted
    against `MAX_PICKLE_ITEMS`, and at STOP the result, walked along every path as printing or
    comparing it would, must stay within `MAX_PICKLE_ITEMS` and `MAX_NESTING`.
    """

    def __init__(self):
        self.stack, self.marks, self.memo, self.count = [], [], {}, 0

    def _spend(self, items):
        self.count += items
        if self.count > MAX_PICKLE_ITEMS:
            raise Refused(f"its pickle has more than {MAX_PICKLE_ITEMS} opcodes, objects and entries. "
                          f"Expected a state dict (a P3D-199 training checkpoint has about 200 000)")

    def _new(self, kind, items=(), value=None):
        self._spend(1 + len(items))
        return _Node(kind, items, value)

    def _pop_mark(self):
        if not self.marks:
            raise pickle.UnpicklingError("an opcode needs a MARK that is not there")
        mark = self.marks.pop()
        items, self.stack[mark:] = self.stack[mark:], []
        return items

    def _pop(self, n=1):
        floor = self.marks[-1] if self.marks else 0
        if len(self.stack) - n < floor:
            raise pickle.UnpicklingError("the pickle's stack underflows")
        items, self.stack[len(self.stack) - n:] = self.stack[len(self.stack) - n:], []
        return items

    def _add(self, target, kinds, items, hashed=()):
        if target.kind not in kinds:
            raise Refused(f"its pickle adds entries to a {target.kind}. Expected a {' or '.join(kinds)}")
        if any(item.kind not in _HASHED_KINDS for item in hashed):
            raise Refused("its pickle uses a container as a dict key or set item. Expected strings or numbers")
        self._spend(len(items))
        target.items.extend(items)

    def _reduce(self, func, args):
        if func.kind != "global" or args.kind != "tuple":
            raise Refused(f"its pickle calls a {func.kind} with a {args.kind}. Expected an allowed "
                          "torch function or OrderedDict called with a tuple")
        if func.value != ORDERED_DICT:
            return self._new("call", [func, args])
        # Python 2 pickles an OrderedDict as OrderedDict([[key, value], ...]).
        pairs = args.items[0].items if len(args.items) == 1 else []
        if len(args.items) > 1 or (args.items and args.items[0].kind not in ("list", "tuple")) or any(
                pair.kind not in ("list", "tuple") or len(pair.items) != 2 or pair.items[0].kind not in _HASHED_KINDS
                for pair in pairs):
            raise Refused("its pickle calls OrderedDict with arguments other than key-value pairs "
                          "keyed by strings or numbers")
        return self._new("odict", [args])

    def step(self, name, arg):
        """Apply one opcode; return the pickle's result at STOP, else None."""
        stack = self.stack
        self._spend(1)
        if name in _ATOM_OPS:
            if isinstance(arg, int) and arg.bit_length() > _MAX_INT_BITS:
                raise Refused(f"its pickle holds an integer of {arg.bit_length()} bits. "
                              f"Expected at most {_MAX_INT_BITS}")
            stack.append(self._new("atom", value=arg))
        elif name in ("PROTO", "FRAME"):
            pass
        elif name in ("EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "EMPTY_TUPLE"):
            stack.append(self._new(name[len("EMPTY_"):].lower()))
        elif name == "MARK":
            self.marks.append(len(stack))
        elif name in ("TUPLE", "LIST", "FROZENSET"):
            items = self._pop_mark()
            if name == "FROZENSET" and any(item.kind not in _HASHED_KINDS for item in items):
                raise Refused("its pickle puts a container in a set. Expected strings or numbers")
            stack.append(self._new(name.lower(), items))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            stack.append(self._new("tuple", self._pop(int(name[-1]))))
        elif name == "DICT":
            items = self._pop_mark()
            if len(items) % 2 or any(key.kind not in _HASHED_KINDS for key in items[::2]):
                raise Refused("its pickle makes a dict keyed by containers. Expected strings or numbers")
            stack.append(self._new("dict", items))
        elif name in ("APPEND", "APPENDS"):
            items = self._pop() if name == "APPEND" else self._pop_mark()
            if not stack:
                raise pickle.UnpicklingError(f"{name} without a list")
            self._add(stack[-1], ("list",), items)
        elif name in ("SETITEM", "SETITEMS"):
            items = self._pop(2) if name == "SETITEM" else self._pop_mark()
            if len(items) % 2 or not stack:
                raise pickle.UnpicklingError(f"{name} without a dict or with an odd number of items")
            self._add(stack[-1], ("dict", "odict"), items, hashed=items[::2])
        elif name == "ADDITEMS":
            items = self._pop_mark()
            if not stack:
                raise pickle.UnpicklingError("ADDITEMS without a set")
            self._add(stack[-1], ("set",), items, hashed=items)
        elif name == "POP":
            self._pop() if stack and (not self.marks or self.marks[-1] < len(stack)) else self._pop_mark()
        elif name == "POP_MARK":
            self._pop_mark()
        elif name == "DUP":
            stack.append(self._pop()[0])
            stack.append(stack[-1])
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            index = len(self.memo) if name == "MEMOIZE" else arg
            if not 0 <= index <= len(self.memo) or not stack:
                raise Refused(f"its pickle stores memo entry {index} while it has {len(self.memo)}. "
                              f"Expected the next free entry or an earlier one")
            self.memo[index] = stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if arg not in self.memo:
                raise pickle.UnpicklingError(f"memo entry {arg} is read before it is written")
            stack.append(self.memo[arg])
            self._spend(1)
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            if name == "GLOBAL":
                module, _, attr = arg.partition(" ")
            else:
                module, attr = (node.value for node in self._pop(2))
                if not (isinstance(module, str) and isinstance(attr, str)):
                    raise pickle.UnpicklingError("STACK_GLOBAL needs two strings")
            stack.append(self._new("global", value=python3_name(module, attr)))
        elif name == "REDUCE":
            func, args = self._pop(2)
            stack.append(self._reduce(func, args))
        elif name == "BUILD":
            (state,) = self._pop()
            if not stack or stack[-1].kind != "odict":
                raise Refused(f"its pickle sets the state of a {stack[-1].kind if stack else 'nothing'}. "
                              f"Expected only OrderedDicts' attributes")
            self._add(stack[-1], ("odict",), [state])
        elif name == "BINPERSID":
            stack.append(self._new("storage", self._pop()))
        elif name == "STOP":
            (result,) = self._pop()
            _check_walk(result)
            return result
        elif name in _CONSTRUCTORS:
            cls = self._constructed_class(name, arg)
            raise Refused(f"it constructs a {cls} object (pickle opcode {name}), which a state dict never needs. "
                          f"Only tensors, dicts and numbers are allowed. Received: global={cls}")
        else:  # PERSID, EXT1/2/4, BYTEARRAY8, NEXT_BUFFER, READONLY_BUFFER
            raise Refused(f"its pickle uses the {name} opcode, which a torch state dict never needs. "
                          f"Received: opcode {name}")
        return None

    def _constructed_class(self, name, arg):
        """The class an object-constructing opcode names, as `module.name`, for the message."""
        if name == "INST":
            return ".".join(python3_name(*arg.split(" ", 1)))
        position = {"NEWOBJ": -2, "NEWOBJ_EX": -3}.get(name, self.marks[-1] if self.marks else -1)
        try:
            node = self.stack[position]
        except IndexError:
            return "<unknown>"
        return ".".join(node.value) if node.kind == "global" else f"<{node.kind}>"


def _check_walk(root):
    """Refuse a pickle result that is recursive, nests deeper than `MAX_NESTING`, or holds more
    than `MAX_PICKLE_ITEMS` objects when every path to a shared object is counted (as printing,
    hashing or comparing it would)."""
    size, depth, open_nodes, todo = {}, {}, set(), [(root, False)]
    while todo:
        node, children_done = todo.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            size[key] = 1 + sum(size[id(child)] for child in node.items)
            depth[key] = 1 + max((depth[id(child)] for child in node.items), default=0)
            if size[key] > MAX_PICKLE_ITEMS:
                raise Refused(f"its pickle's objects, counted along every path, exceed {MAX_PICKLE_ITEMS} "
                              f"(shared containers that multiply). Expected a state dict")
            if depth[key] > MAX_NESTING:
                raise Refused(f"its pickle nests containers more than {MAX_NESTING} deep. "
                              f"Expected a state dict (about 8 deep)")
        elif key not in size:
            if key in open_nodes:
                raise Refused("its pickle holds a container that contains itself. Expected a state dict")
            open_nodes.add(key)
            todo.append((node, True))
            todo.extend((child, False) for child in node.items if id(child) not in size)


def scan_pickle(reader):
    """The length in bytes of the pickle that `reader` (a `BoundedReader`) starts with, once
    `PickleScan` has accepted every opcode."""
    scan = PickleScan()
    for opcode, arg, _ in pickletools.genops(reader):
        if scan.step(opcode.name, arg) is not None:
            return reader.tell()
    raise pickle.UnpicklingError("the pickle ends without STOP")
