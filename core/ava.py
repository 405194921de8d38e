"""AVA facts shared by training, export and the service (torch-free).

The 80 AVA v2.2 action names, which of them are pose classes, the 60 classes the
ActivityNet challenge evaluates, the `LabelMap` record, and readers/writers for the two
label-map files AVA ships:

* the ActivityNet label-map ``.pbtxt`` (``item { name: "..." id: N }``; AVA v2.2's own
  list spells the blocks ``label { name: "..." label_id: N label_type: ... }``, which is
  read too), and
* the plain names list (line ``i`` is the name of id ``i``, e.g. ``ava.names``).

Every malformed input raises `AvaFormatError`, whose message names the file, the line
and the field, so a user can open the file at that line and fix it.

This module must not import torch: the service imports it on a PyTorch-free install.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

__all__ = [
    "AVA_NAMES",
    "EVALUATED_IDS",
    "NUM_AVA_CLASSES",
    "PERSON_INTERACTION_IDS",
    "OBJECT_INTERACTION_IDS",
    "POSE_IDS",
    "AvaFormatError",
    "LabelMap",
    "read_class_names",
    "read_label_map_pbtxt",
    "label_map_from_names",
    "write_label_map_pbtxt",
]

StrPath = str | PathLike[str]


class AvaFormatError(ValueError):
    """A malformed AVA-format file (CSV, label map, names list, dataset.json).

    ``file`` and ``field`` may be ``None`` and ``line`` may be ``None`` when the problem is
    not tied to one of them (e.g. a file that does not exist has no line).
    """

    def __init__(
        self, file: StrPath | None, line: int | None, field: str | None, message: str
    ) -> None:
        self.file = None if file is None else str(file)
        self.line = line
        self.field = field
        self.message = message
        where = self.file if self.file is not None else "<input>"
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {message}")


# Line i (1-based) of SlowFast's demo/AVA/ava.names, which is AVA v2.2's list: id i.
AVA_NAMES: tuple[str, ...] = (
    "bend/bow (at the waist)",  # 1
    "crawl",  # 2
    "crouch/kneel",  # 3
    "dance",  # 4
    "fall down",  # 5
    "get up",  # 6
    "jump/leap",  # 7
    "lie/sleep",  # 8
    "martial art",  # 9
    "run/jog",  # 10
    "sit",  # 11
    "stand",  # 12
    "swim",  # 13
    "walk",  # 14
    "answer phone",  # 15
    "brush teeth",  # 16
    "carry/hold (an object)",  # 17
    "catch (an object)",  # 18
    "chop",  # 19
    "climb (e.g., a mountain)",  # 20
    "clink glass",  # 21
    "close (e.g., a door, a box)",  # 22
    "cook",  # 23
    "cut",  # 24
    "dig",  # 25
    "dress/put on clothing",  # 26
    "drink",  # 27
    "drive (e.g., a car, a truck)",  # 28
    "eat",  # 29
    "enter",  # 30
    "exit",  # 31
    "extract",  # 32
    "fishing",  # 33
    "hit (an object)",  # 34
    "kick (an object)",  # 35
    "lift/pick up",  # 36
    "listen (e.g., to music)",  # 37
    "open (e.g., a window, a car door)",  # 38
    "paint",  # 39
    "play board game",  # 40
    "play musical instrument",  # 41
    "play with pets",  # 42
    "point to (an object)",  # 43
    "press",  # 44
    "pull (an object)",  # 45
    "push (an object)",  # 46
    "put down",  # 47
    "read",  # 48
    "ride (e.g., a bike, a car, a horse)",  # 49
    "row boat",  # 50
    "sail boat",  # 51
    "shoot",  # 52
    "shovel",  # 53
    "smoke",  # 54
    "stir",  # 55
    "take a photo",  # 56
    "text on/look at a cellphone",  # 57
    "throw",  # 58
    "touch (an object)",  # 59
    "turn (e.g., a screwdriver)",  # 60
    "watch (e.g., TV)",  # 61
    "work on a computer",  # 62
    "write",  # 63
    "fight/hit (a person)",  # 64
    "give/serve (an object) to (a person)",  # 65
    "grab (a person)",  # 66
    "hand clap",  # 67
    "hand shake",  # 68
    "hand wave",  # 69
    "hug (a person)",  # 70
    "kick (a person)",  # 71
    "kiss (a person)",  # 72
    "lift (a person)",  # 73
    "listen to (a person)",  # 74
    "play with kids",  # 75
    "push (another person)",  # 76
    "sing to (e.g., self, a person, a group)",  # 77
    "take (an object) from (a person)",  # 78
    "talk to (e.g., self, a person, a group)",  # 79
    "watch (a person)",  # 80
)

NUM_AVA_CLASSES = len(AVA_NAMES)  # 80

# Ids 1-14 are pose ("person movement") classes: every person has exactly one of them,
# which is why the model puts a softmax over these columns and a sigmoid over the rest.
POSE_IDS: tuple[int, ...] = tuple(range(1, 15))
# 15-63: person-object interactions; 64-80: person-person interactions.
OBJECT_INTERACTION_IDS: tuple[int, ...] = tuple(range(15, 64))
PERSON_INTERACTION_IDS: tuple[int, ...] = tuple(range(64, 81))

# The 60 classes of ActivityNet's ava_action_list_v2.1_for_activitynet_2018.pbtxt: the
# classes frame-mAP is averaged over (the other 20 have too few test instances).
EVALUATED_IDS: tuple[int, ...] = (
    1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 17, 20, 22, 24, 26, 27,
    28, 29, 30, 34, 36, 37, 38, 41, 43, 45, 46, 47, 48, 49, 51, 52, 54, 56, 57, 58,
    59, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 72, 73, 74, 76, 77, 78, 79, 80,
)  # fmt: skip


@dataclass(frozen=True)
class LabelMap:
    """An ordered set of action classes: ``ids[k]`` is named ``names[k]``.

    The order is the column order of a model's logits (column ``k`` scores class
    ``ids[k]``). Names need not be unique (mmaction2's sample map repeats one), ids must.
    Validated once, here; everything downstream can trust it.
    """

    ids: tuple[int, ...]
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.names):
            raise ValueError(f"LabelMap: {len(self.ids)} ids but {len(self.names)} names")
        if not self.ids:
            raise ValueError("LabelMap: no classes; a label map needs at least one")
        seen: set[int] = set()
        for class_id in self.ids:
            if isinstance(class_id, bool) or not isinstance(class_id, int) or class_id < 1:
                raise ValueError(f"LabelMap: class id {class_id!r} is not a positive integer")
            if class_id in seen:
                raise ValueError(f"LabelMap: class id {class_id} appears twice")
            seen.add(class_id)

    # -- constructors -------------------------------------------------------------------
    @classmethod
    def from_ids(cls, ids: Iterable[int]) -> LabelMap:
        """The given AVA ids (1..80), named from `AVA_NAMES`, in the given order."""
        ids = tuple(ids)
        for class_id in ids:
            if not 1 <= class_id <= NUM_AVA_CLASSES:
                raise ValueError(f"LabelMap.from_ids: {class_id} is not an AVA id (1..80)")
        return cls(ids=ids, names=tuple(AVA_NAMES[i - 1] for i in ids))

    @classmethod
    def ava_all(cls) -> LabelMap:
        """All 80 AVA v2.2 classes, ids 1..80."""
        return cls.from_ids(range(1, NUM_AVA_CLASSES + 1))

    @classmethod
    def ava_evaluated(cls) -> LabelMap:
        """The 60 classes the ActivityNet AVA challenge evaluates."""
        return cls.from_ids(EVALUATED_IDS)

    # -- queries --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, class_id: object) -> bool:
        return class_id in self._index

    def __iter__(self) -> Iterator[tuple[int, str]]:
        return iter(zip(self.ids, self.names, strict=True))

    @property
    def _index(self) -> dict[int, int]:
        # Frozen dataclass: cache the id -> column dict on first use.
        cached: dict[int, int] | None = self.__dict__.get("_index_cache")
        if cached is None:
            cached = {class_id: k for k, class_id in enumerate(self.ids)}
            object.__setattr__(self, "_index_cache", cached)
        return cached

    def index(self, class_id: int) -> int:
        """Column of ``class_id``; KeyError naming the id if it is not in the map."""
        try:
            return self._index[class_id]
        except KeyError:
            raise KeyError(f"class id {class_id} is not in this label map") from None

    def name(self, class_id: int) -> str:
        return self.names[self.index(class_id)]

    @property
    def pose_ids(self) -> tuple[int, ...]:
        """The pose classes (ids 1..14) present in this map, in map order."""
        return tuple(i for i in self.ids if i in POSE_IDS)

    def pose_mask(self) -> tuple[bool, ...]:
        """Per column: is it a pose class (softmax group) or not (sigmoid group)."""
        return tuple(i in POSE_IDS for i in self.ids)

    def subset(self, ids: Iterable[int]) -> LabelMap:
        """The classes of ``ids`` that are in this map, keeping this map's order."""
        wanted = set(ids)
        kept = [(i, n) for i, n in self if i in wanted]
        return LabelMap(ids=tuple(i for i, _ in kept), names=tuple(n for _, n in kept))


# -- label-map pbtxt ------------------------------------------------------------------------

# A deliberately small reader of the protobuf text format as the ActivityNet/AVA label
# maps use it: blocks `item { ... }` or `label { ... }` holding `key: value` pairs. Not a
# general protobuf parser; anything outside that shape is reported, not guessed at.
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<comment>\#[^\n]*)
      | (?P<string>"(?:[^"\\\n]|\\.)*")
      | (?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*:
      | (?P<word>[A-Za-z_][A-Za-z0-9_]*|-?\d+)
      | (?P<open>\{)
      | (?P<close>\})
    )""",
    re.VERBOSE,
)
_BLOCKS = ("item", "label")
_ID_KEYS = ("id", "label_id")
_NAME_KEYS = ("name", "display_name")


def _tokens(text: str, path: StrPath) -> Iterator[tuple[str, str, int]]:
    """Yield (kind, text, 1-based line) for each token, skipping comments."""
    pos = 0
    while True:
        match = _TOKEN.match(text, pos)
        if match is None:
            rest = text[pos:]
            if not rest.strip():
                return
            start = pos + len(rest) - len(rest.lstrip())
            bad = text[start:].split("\n", 1)[0][:40]
            line = text.count("\n", 0, start) + 1
            raise AvaFormatError(path, line, None, f"cannot parse {bad!r} (expected pbtxt)")
        kind = match.lastgroup or ""
        if kind != "comment":
            yield kind, match.group(kind), text.count("\n", 0, match.start(kind)) + 1
        pos = match.end()


def read_label_map_pbtxt(path: StrPath) -> LabelMap:
    """Read an ActivityNet-format label map (``item { name: "..." id: N }``).

    Also accepts AVA v2.2's ``label { name: ... label_id: N label_type: ... }`` blocks.
    Other fields inside a block are ignored. Missing or duplicate ids, a missing name, or
    anything that is not this format raises `AvaFormatError` naming file, line and field.
    """
    path = Path(path)
    if not path.is_file():
        raise AvaFormatError(path, None, None, "label map file not found")
    text = path.read_text(encoding="utf-8")
    ids: list[int] = []
    names: list[str] = []
    id_lines: dict[int, int] = {}
    tokens = _tokens(text, path)
    for kind, value, line in tokens:
        if kind != "word" or value not in _BLOCKS:
            raise AvaFormatError(path, line, None, f"expected 'item {{' but found {value!r}")
        kind, value, line = next(tokens, ("eof", "", line))
        if kind != "open":
            raise AvaFormatError(path, line, None, "expected '{' after 'item'")
        block_line = line
        fields: dict[str, tuple[str, int]] = {}
        while True:
            kind, value, line = next(tokens, ("eof", "", line))
            if kind == "close":
                break
            if kind != "key":
                raise AvaFormatError(
                    path, line, None, f"expected 'key: value' or '}}' but found {value!r}"
                )
            key = value
            kind, value, line = next(tokens, ("eof", "", line))
            if kind not in ("string", "word"):
                raise AvaFormatError(path, line, key, "missing value")
            fields.setdefault(key, (value, line))
        id_key = next((k for k in _ID_KEYS if k in fields), None)
        name_key = next((k for k in _NAME_KEYS if k in fields), None)
        if id_key is None:
            raise AvaFormatError(path, block_line, "id", "block has no 'id:' field")
        if name_key is None:
            raise AvaFormatError(path, block_line, "name", "block has no 'name:' field")
        raw_id, id_line = fields[id_key]
        if not re.fullmatch(r"\d+", raw_id) or int(raw_id) < 1:
            raise AvaFormatError(path, id_line, id_key, f"{raw_id!r} is not a positive integer")
        class_id = int(raw_id)
        if class_id in id_lines:
            raise AvaFormatError(
                path, id_line, id_key, f"id {class_id} already defined on line {id_lines[class_id]}"
            )
        raw_name, name_line = fields[name_key]
        if not raw_name.startswith('"'):
            raise AvaFormatError(path, name_line, name_key, "name must be a quoted string")
        id_lines[class_id] = id_line
        ids.append(class_id)
        names.append(_unquote(raw_name))
    if not ids:
        raise AvaFormatError(path, None, None, "label map has no 'item { ... }' blocks")
    return LabelMap(ids=tuple(ids), names=tuple(names))


def _unquote(quoted: str) -> str:
    return re.sub(r"\\(.)", r"\1", quoted[1:-1])


def write_label_map_pbtxt(label_map: LabelMap, path: StrPath) -> None:
    """Write ``label_map`` in the ActivityNet format that `read_label_map_pbtxt` reads."""
    lines: list[str] = []
    for class_id, name in label_map:
        if "\n" in name:
            raise ValueError(f"class {class_id}: a name cannot contain a newline")
        escaped = name.replace("\\", "\\\\").replace('"', '\\"')
        lines += ["item {", f'  name: "{escaped}"', f"  id: {class_id}", "}"]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_class_names(path: StrPath) -> tuple[str, ...]:
    """Read a names list where line ``i`` (1-based) is the name of class id ``i``.

    Trailing blank lines are ignored; a blank line in the middle would shift every later
    id by one, so it is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise AvaFormatError(path, None, None, "class names file not found")
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise AvaFormatError(path, None, None, "class names file is empty")
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            raise AvaFormatError(
                path,
                number,
                "name",
                f"blank line: line i names class id i, so id {number} "
                "would have no name (remove the line or name the class)",
            )
    return tuple(text.strip() for text in lines)


def label_map_from_names(names: Sequence[str]) -> LabelMap:
    """A label map with ids 1..len(names), e.g. from `read_class_names`."""
    return LabelMap(ids=tuple(range(1, len(names) + 1)), names=tuple(names))
