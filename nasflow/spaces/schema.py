"""Declarative search spaces: YAML in, validated ``SearchSpace`` out, Keras Tuner models built.

The format is documented in the README ("Search spaces"). Parsing is strict in the
way Katib's NAS config is: every key is known, every hyperparameter is typed, every
condition points backwards at a legal parent value, and the space is checked against
what its family's builder reads (``nasflow.spaces.families``). Any input yields either a
``SearchSpace`` or a one-line ``SearchSpaceError`` naming the file and field at fault.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import keras
import keras_tuner
import yaml

from nasflow import config
from nasflow.errors import InvalidArchitectureError, SearchSpaceError
from nasflow.spaces.catalog import FAMILIES
from nasflow.spaces.families import Family, Need, SpaceProblem, with_defaults

HP_TYPES = ("int", "float", "choice", "boolean", "fixed")
MODALITIES = ("image", "tabular")
#: Bundled space used when none is named, by modality.
DEFAULT_SPACES = {"image": "cnn", "tabular": "mlp"}
DEFAULT_BATCH_SIZE = 32
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
#: Upper bound of a ``repeat`` count; keeps template expansion small.
MAX_REPEAT = 16
#: Upper bound on hyperparameters after expansion.
MAX_HYPERPARAMETERS = 500
# Integers beyond 2**53 lose precision in the float arithmetic Keras Tuner does on them.
_INT_LIMIT = 2**53

_TOP_KEYS = ("name", "family", "modality", "description", "hyperparameters", "training")
_TRAINING_KEYS = ("batch_size", "optimizer")
_HP_KEYS = {
    "int": ("name", "type", "min", "max", "step", "sampling", "default", "when"),
    "float": ("name", "type", "min", "max", "step", "sampling", "default", "when"),
    "choice": ("name", "type", "values", "default", "when"),
    "boolean": ("name", "type", "default", "when"),
    "fixed": ("name", "type", "value", "when"),
}
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_SPACE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SCALAR_TYPES = (int, float, str, bool)
_KIND_TEXT = {
    "int": "an int, or a choice or fixed of integers",
    "float": "a float, or a choice or fixed of numbers",
    "bool": "a boolean, or a choice or fixed of booleans",
    "str": "a choice or fixed of strings",
}

Scalar = int | float | str | bool


@dataclass(frozen=True)
class HyperparameterSpec:
    """One typed hyperparameter, as Keras Tuner will declare it.

    Attributes:
        name: Unique name (``filters_0`` for block 0 of a ``repeat``).
        type: ``int``, ``float``, ``choice``, ``boolean`` or ``fixed``.
        min: Lower bound (``int``/``float``).
        max: Upper bound, inclusive (``int``/``float``).
        step: Spacing of values (``int``/``float``); a multiplier under log sampling.
            A ``float`` without step is continuous.
        sampling: ``linear`` or ``log`` (``int``/``float``).
        values: The options of a ``choice``.
        default: Value before the tuner picks one; ``None`` means Keras Tuner's default.
        value: The value of a ``fixed``.
        condition: ``(parent, values)``: active only while the parent is active and
            takes one of ``values`` (Keras Tuner's ``conditional_scope``).
    """

    name: str
    type: str
    min: int | float | None = None
    max: int | float | None = None
    step: int | float | None = None
    sampling: str = "linear"
    values: tuple[Scalar, ...] = ()
    default: Scalar | None = None
    value: Scalar | None = None
    condition: tuple[str, tuple] | None = None

    def is_continuous(self) -> bool:
        """Whether the hyperparameter has infinitely many values (a float without step)."""
        return self.type == "float" and self.step is None

    def is_bool(self) -> bool:
        """Whether its values are booleans (Keras Tuner stores boolean choices as 0/1)."""
        return self.type == "boolean" or any(type(v) is bool for v in self._finite_values())

    def size(self) -> int | None:
        """Number of distinct values, or ``None`` when continuous."""
        if self.type == "choice":
            return len(self.values)
        if self.type == "boolean":
            return 2
        if self.type == "fixed":
            return 1
        return _numeric_count(self)

    def contains(self, candidate: object) -> bool:
        """Whether ``candidate`` is one of the values (types must match; ``True`` is not ``1``)."""
        if self.type == "boolean":
            return type(candidate) is bool
        if self.type == "int":
            return type(candidate) is int and _int_contains(self, candidate)
        if self.type == "float":
            return type(candidate) in (int, float) and self.min <= candidate <= self.max  # type: ignore[operator]
        return any(type(v) is type(candidate) and v == candidate for v in self._finite_values())

    def default_value(self) -> Scalar:
        """The value Keras Tuner uses before the tuner picks one."""
        if self.type == "fixed":
            return self.value  # type: ignore[return-value]
        if self.default is not None:
            return self.default
        if self.type == "choice":
            return self.values[0]
        if self.type == "boolean":
            return False
        return self.min  # type: ignore[return-value]

    def to_dict(self) -> dict:
        """The entry as written in a search-space file (conditions as ``when``)."""
        entry: dict = {"name": self.name, "type": self.type}
        if self.type in ("int", "float"):
            entry["min"], entry["max"] = self.min, self.max
            if self.step is not None:
                entry["step"] = self.step
            if self.sampling != "linear":
                entry["sampling"] = self.sampling
        if self.type == "choice":
            entry["values"] = list(self.values)
        if self.type == "fixed":
            entry["value"] = self.value
        if self.default is not None:
            entry["default"] = self.default
        if self.condition is not None:
            entry["when"] = {"parent": self.condition[0], "values": list(self.condition[1])}
        return entry

    def register(self, hp: keras_tuner.HyperParameters) -> None:
        """Declares this hyperparameter in ``hp`` (inside whatever scopes are open)."""
        if self.type == "int":
            hp.Int(
                self.name, self.min, self.max, step=self.step, sampling=self.sampling, default=self.default
            )
        elif self.type == "float":
            hp.Float(
                self.name, self.min, self.max, step=self.step, sampling=self.sampling, default=self.default
            )
        elif self.type == "choice":
            hp.Choice(self.name, list(self.values), default=self.default)
        elif self.type == "boolean":
            hp.Boolean(self.name, default=bool(self.default))
        else:
            hp.Fixed(self.name, self.value)

    def _finite_values(self) -> tuple[Scalar, ...]:
        if self.type == "fixed":
            return (self.value,)  # type: ignore[return-value]
        if self.type == "boolean":
            return (False, True)
        return self.values


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space: what to search and which builder turns it into a model.

    Attributes:
        name: Name of the space (used in run names and tags).
        family: Builder family, a key of ``nasflow.spaces.catalog.FAMILIES``.
        modality: ``image`` or ``tabular``.
        hyperparameters: Every hyperparameter, templates expanded, parents first.
        training: Fixed training settings (``batch_size``, ``optimizer``).
        source: File the space was read from, or ``"<dict>"``.
        description: Free text from the file.
    """

    name: str
    family: str
    modality: str
    hyperparameters: tuple[HyperparameterSpec, ...]
    training: dict = field(default_factory=dict)
    source: str = "<dict>"
    description: str = ""

    def declare(self, hp: keras_tuner.HyperParameters) -> None:
        """Registers every hyperparameter in ``hp``, conditional ones inside their scopes.

        Args:
            hp: The Keras Tuner container to declare into; values already set are kept.
        """
        for spec in self.hyperparameters:
            chain = self._condition_chain(spec)
            # A caller may set a parent's value without the children it activates; Keras
            # Tuner would then raise KeyError for the child instead of using its default.
            if spec.name not in hp.values and all(p in hp.values and hp.values[p] in ok for p, ok in chain):
                hp.values[spec.name] = spec.default_value()
            with contextlib.ExitStack() as scopes:
                for parent, values in chain:
                    scopes.enter_context(hp.conditional_scope(parent, list(values)))
                spec.register(hp)

    def build_model(
        self, hp: keras_tuner.HyperParameters, input_shape: Sequence[int], num_classes: int
    ) -> keras.Model:
        """Declares the space, then builds and compiles the model ``hp`` selects.

        Args:
            hp: Keras Tuner hyperparameters; missing values take their defaults.
            input_shape: Shape of one example, e.g. ``(8, 8, 1)`` or ``(13,)``.
            num_classes: Number of classes of the softmax output.

        Returns:
            A compiled model: the training optimizer at ``learning_rate``,
            ``sparse_categorical_crossentropy``, ``accuracy``.

        Raises:
            InvalidArchitectureError: The selected architecture cannot exist for this
                input (checked before any layer is built).
        """
        if not isinstance(num_classes, numbers.Integral) or isinstance(num_classes, bool) or num_classes < 2:
            raise InvalidArchitectureError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        self.declare(hp)
        family = FAMILIES[self.family]
        values = with_defaults(family, self.active_values(hp.values))
        family.check(values, input_shape)
        model = family.build(values, input_shape, int(num_classes))
        model.compile(
            optimizer=_optimizer(str(self.training.get("optimizer", "adam")), float(values["learning_rate"])),  # type: ignore[arg-type]
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        return model

    def active_values(self, values: Mapping[str, object]) -> dict[str, object]:
        """The values of the hyperparameters that are active under ``values``.

        Args:
            values: Chosen values by name (e.g. ``trial.hyperparameters.values``);
                missing ones take their defaults, inactive ones are dropped.

        Returns:
            Active values in declaration order, booleans as ``bool``.
        """
        active: dict[str, object] = {}
        for spec in self.hyperparameters:
            if spec.condition is not None:
                parent, allowed = spec.condition
                if parent not in active or active[parent] not in allowed:
                    continue
            value = spec.value if spec.type == "fixed" else values.get(spec.name, spec.default_value())
            active[spec.name] = bool(value) if spec.is_bool() else value
        return active

    def batch_size(self) -> int:
        """Training batch size from ``training.batch_size`` (default 32)."""
        return int(self.training.get("batch_size", DEFAULT_BATCH_SIZE))

    def to_dict(self) -> dict:
        """The space in file form; ``parse_search_space(space.to_dict())`` gives it back."""
        data: dict = {"name": self.name, "family": self.family, "modality": self.modality}
        if self.description:
            data["description"] = self.description
        data["hyperparameters"] = [spec.to_dict() for spec in self.hyperparameters]
        if self.training:
            data["training"] = dict(self.training)
        return data

    def _condition_chain(self, spec: HyperparameterSpec) -> list[tuple[str, tuple]]:
        """Conditions from the outermost ancestor down to ``spec``'s own."""
        by_name = {s.name: s for s in self.hyperparameters}
        chain = []
        while spec.condition is not None:
            chain.append(spec.condition)
            spec = by_name[spec.condition[0]]
        return chain[::-1]


class SearchSpaceHyperModel(keras_tuner.HyperModel):
    """A Keras Tuner HyperModel that builds whatever a ``SearchSpace`` describes."""

    def __init__(
        self,
        space: SearchSpace,
        input_shape: Sequence[int],
        num_classes: int,
        name: str | None = None,
        tunable: bool = True,
    ):
        super().__init__(name=name or space.name, tunable=tunable)
        self.space = space
        self.input_shape = tuple(int(d) for d in input_shape)
        self.num_classes = int(num_classes)

    def declare_hyperparameters(self, hp: keras_tuner.HyperParameters) -> None:
        """Registers the whole space without building a model."""
        self.space.declare(hp)

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        """Builds the compiled model; raises ``InvalidArchitectureError`` for impossible ones."""
        return self.space.build_model(hp, self.input_shape, self.num_classes)


# --- public functions ------------------------------------------------------------------


def parse_search_space(data: object, source: str = "<dict>") -> SearchSpace:
    """Validates already-loaded data (e.g. from YAML) as a search space.

    Args:
        data: Anything; only a mapping in the documented format is accepted.
        source: Name used in error messages and kept in ``SearchSpace.source``.

    Returns:
        The validated space.

    Raises:
        SearchSpaceError: One line naming ``source`` and the field at fault.
    """
    return _Parser(str(source)).parse(data)


def load_search_space(path: str | Path) -> SearchSpace:
    """Reads and validates a search-space YAML file.

    Args:
        path: The file.

    Returns:
        The validated space, with ``source`` set to ``path``.

    Raises:
        SearchSpaceError: The file is missing, unreadable, not YAML, or invalid.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SearchSpaceError(_one_line(f"{source}: file not found")) from None
    except UnicodeDecodeError as error:
        raise SearchSpaceError(_one_line(f"{source}: not UTF-8 text (byte {error.start})")) from None
    except OSError as error:
        raise SearchSpaceError(_one_line(f"{source}: cannot read file ({error.strerror or error})")) from None
    return parse_search_space(_load_yaml(text, source), source)


def resolve_search_space(name_or_path: str | None, modality: str) -> Path:
    """Finds the search-space file a user means.

    Args:
        name_or_path: ``None``/``""`` for the modality's default, a bundled name such as
            ``mobile_cnn`` (or ``mobile_cnn.yaml``), or a path to a YAML file.
        modality: ``image`` or ``tabular``; picks the default space.

    Returns:
        Path of an existing file.

    Raises:
        SearchSpaceError: Unknown modality, or no such file.
    """
    if not name_or_path:
        if modality not in DEFAULT_SPACES:
            raise SearchSpaceError(f"modality {modality!r} is unknown (expected {', '.join(MODALITIES)})")
        name_or_path = DEFAULT_SPACES[modality]
    candidate = Path(name_or_path)
    is_bare_name = candidate.name == name_or_path
    file_name = name_or_path if candidate.suffix in (".yaml", ".yml") else f"{name_or_path}.yaml"
    bundled = [folder / file_name for folder in config.search_spaces_dirs()] if is_bare_name else []
    # "mobile_cnn" means the bundled space; "my_space.yaml" or "dir/x" mean that file first.
    order = bundled + [candidate] if candidate.suffix == "" else [candidate, *bundled]
    for path in order:
        if path.is_file():
            return path
    names = sorted({p.stem for folder in config.search_spaces_dirs() for p in folder.glob("*.yaml")})
    raise SearchSpaceError(
        _one_line(
            f"{name_or_path}: search space not found (not a file; bundled: {', '.join(names) or 'none'})"
        )
    )


def search_space_size(space: SearchSpace) -> int | None:
    """Counts the distinct architectures of a space.

    Conditional hyperparameters count only under the parent values that activate
    them, so ``num_blocks`` 1-2 with ``filters_1`` (2 values) active when
    ``num_blocks == 2`` is 1 + 2 = 3 architectures, not 2 x 2.

    Args:
        space: A validated space.

    Returns:
        The number of architectures, or ``None`` when a float without step makes it
        infinite.
    """
    if any(spec.is_continuous() for spec in space.hyperparameters):
        return None
    children: dict[str, list[HyperparameterSpec]] = {}
    for spec in space.hyperparameters:
        if spec.condition is not None:
            children.setdefault(spec.condition[0], []).append(spec)

    @functools.cache
    def subtree(name: str) -> int:
        spec = next(s for s in space.hyperparameters if s.name == name)
        kids = children.get(name, [])
        # Parent values no child condition mentions each contribute exactly one architecture.
        mentioned: list[Scalar] = []
        for kid in kids:
            mentioned += [v for v in kid.condition[1] if v not in mentioned]  # type: ignore[index]
        total = spec.size() - len(mentioned)  # type: ignore[operator]
        for value in mentioned:
            total += math.prod(subtree(kid.name) for kid in kids if value in kid.condition[1])  # type: ignore[index]
        return total

    return math.prod(subtree(spec.name) for spec in space.hyperparameters if spec.condition is None)


def describe_architecture(space: SearchSpace, values: Mapping[str, object]) -> str:
    """One short line naming the architecture ``values`` select.

    Args:
        space: The space the values come from.
        values: Hyperparameter values (e.g. ``trial.hyperparameters.values``);
            inactive ones are ignored, missing ones take their defaults.

    Returns:
        E.g. ``conv32k3bn-conv64k5 | gap | dense128 drop0.2 | lr 1.2e-3``.
    """
    family = FAMILIES[space.family]
    return family.describe(with_defaults(family, space.active_values(values)))


# --- parsing ---------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate keys, which PyYAML would silently overwrite."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            has_merge = any(key.tag == "tag:yaml.org,2002:merge" for key, _ in node.value)
            self.flatten_mapping(node)
            seen: set = set()
            # Merge keys ('<<') may be overridden on purpose, so they are not duplicates.
            for key_node, _ in [] if has_merge else node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"duplicate key {key!r}",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str, source: str) -> object:
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SearchSpaceError(
            _one_line(f"{source}: invalid YAML{where}: {error.problem or error.context}")
        ) from None
    except yaml.YAMLError as error:
        raise SearchSpaceError(_one_line(f"{source}: invalid YAML: {error}")) from None
    except RecursionError:
        raise SearchSpaceError(f"{source}: invalid YAML: nested too deeply") from None


class _Parser:
    """Turns loaded data into a ``SearchSpace``; every failure is one ``SearchSpaceError``."""

    def __init__(self, source: str):
        self.source = source
        self.specs: list[HyperparameterSpec] = []
        self.by_name: dict[str, HyperparameterSpec] = {}
        self.where: dict[str, str] = {}

    def error(self, message: str) -> SearchSpaceError:
        return SearchSpaceError(_one_line(f"{self.source}: {message}"))

    def label(self, name: str) -> str:
        return f"{self.where[name]} ({name})"

    def parse(self, data: object) -> SearchSpace:
        if not isinstance(data, Mapping):
            raise self.error(f"the top level must be a mapping of keys, got {_kind(data)}")
        self.check_keys(data, _TOP_KEYS, "top level")
        for key in ("name", "family", "modality", "hyperparameters"):
            if key not in data:
                raise self.error(f"missing required key '{key}' at top level")
        name = data["name"]
        if not isinstance(name, str) or not _SPACE_NAME.fullmatch(name):
            raise self.error(f"name {_show(name)} is not valid (letters, digits, '_', '.', '-'; at most 64)")
        family_name = data["family"]
        if not isinstance(family_name, str) or family_name not in FAMILIES:
            raise self.error(f"family {_show(family_name)} is unknown (expected {', '.join(FAMILIES)})")
        family = FAMILIES[family_name]
        modality = data["modality"]
        if not isinstance(modality, str) or modality not in MODALITIES:
            raise self.error(f"modality {_show(modality)} is unknown (expected {', '.join(MODALITIES)})")
        if modality != family.modality:
            raise self.error(f"modality '{modality}' does not fit family '{family.name}' ({family.modality})")
        description = data.get("description", "")
        if not isinstance(description, str):
            raise self.error(f"description must be text, got {_kind(description)}")
        training = self.training(data.get("training"))
        entries = data["hyperparameters"]
        if not isinstance(entries, list) or not entries:
            raise self.error(f"hyperparameters must be a non-empty list, got {_show(entries)}")
        for index, entry in enumerate(entries):
            self.entry(entry, f"hyperparameters[{index}]")
        self.check_family(family)
        return SearchSpace(
            name=name,
            family=family_name,
            modality=modality,
            hyperparameters=tuple(self.specs),
            training=training,
            source=self.source,
            description=description,
        )

    def check_keys(self, mapping: Mapping, allowed: Sequence[str], where: str, hint: str = "") -> None:
        for key in mapping:
            if key not in allowed:
                raise self.error(f"unknown key {_show(key)} at {where}{hint}")

    def training(self, raw: object) -> dict:
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            raise self.error(f"training must be a mapping, got {_kind(raw)}")
        self.check_keys(raw, _TRAINING_KEYS, "training")
        batch_size = raw.get("batch_size", DEFAULT_BATCH_SIZE)
        if type(batch_size) is not int or not 1 <= batch_size <= 65536:
            raise self.error(f"training.batch_size must be an integer in 1..65536, got {_show(batch_size)}")
        optimizer = raw.get("optimizer", "adam")
        if not isinstance(optimizer, str) or optimizer not in OPTIMIZERS:
            raise self.error(
                f"training.optimizer {_show(optimizer)} is unknown (expected {', '.join(OPTIMIZERS)})"
            )
        return dict(raw)

    def entry(self, entry: object, where: str) -> None:
        if not isinstance(entry, Mapping):
            raise self.error(f"{where} must be a mapping, got {_kind(entry)}")
        if "repeat" in entry:
            self.repeat(entry, where)
        else:
            self.add(self.hyperparameter(entry, where, self.by_name, in_repeat=False), where)

    def add(self, spec: HyperparameterSpec, where: str) -> None:
        if spec.name in self.by_name:
            raise self.error(
                f"{where} ({spec.name}): duplicate name, already declared at {self.where[spec.name]}"
            )
        if len(self.specs) >= MAX_HYPERPARAMETERS:
            raise self.error(f"{where}: more than {MAX_HYPERPARAMETERS} hyperparameters")
        self.specs.append(spec)
        self.by_name[spec.name] = spec
        self.where[spec.name] = where

    def repeat(self, entry: Mapping, where: str) -> None:
        self.check_keys(entry, ("repeat",), where)
        body = entry["repeat"]
        where = f"{where}.repeat"
        if not isinstance(body, Mapping):
            raise self.error(f"{where} must be a mapping with count and hyperparameters, got {_kind(body)}")
        self.check_keys(body, ("count", "hyperparameters"), where)
        count = body.get("count")
        if not isinstance(count, str) or count not in self.by_name:
            raise self.error(f"{where}: count {_show(count)} is not a hyperparameter declared before it")
        counts = _small_int_values(self.by_name[count])
        if counts is None:
            raise self.error(
                f"{where}: count '{count}' must be an int, choice or fixed of integers within 0..{MAX_REPEAT}"
            )
        templates = body.get("hyperparameters")
        if not isinstance(templates, list) or not templates:
            raise self.error(f"{where}.hyperparameters must be a non-empty list, got {_show(templates)}")
        parsed: dict[str, HyperparameterSpec] = {}
        locations: list[tuple[HyperparameterSpec, str]] = []
        for index, template in enumerate(templates):
            template_where = f"{where}.hyperparameters[{index}]"
            if not isinstance(template, Mapping):
                raise self.error(f"{template_where} must be a mapping, got {_kind(template)}")
            if "repeat" in template:
                raise self.error(f"{template_where}: a repeat cannot hold another repeat")
            spec = self.hyperparameter(template, template_where, parsed, in_repeat=True)
            if spec.name in parsed:
                raise self.error(f"{template_where} ({spec.name}): duplicate name in this repeat")
            parsed[spec.name] = spec
            locations.append((spec, template_where))
        for unit in range(max(counts, default=0)):
            needed = tuple(c for c in counts if c > unit)
            for spec, template_where in locations:
                if spec.condition is not None:
                    # The sibling it refers to carries the count condition already.
                    condition: tuple[str, tuple] | None = (f"{spec.condition[0]}_{unit}", spec.condition[1])
                elif len(needed) < len(counts):
                    condition = (count, needed)
                else:
                    condition = None
                self.add(replace(spec, name=f"{spec.name}_{unit}", condition=condition), template_where)

    def hyperparameter(
        self, entry: Mapping, where: str, known: Mapping[str, HyperparameterSpec], in_repeat: bool
    ) -> HyperparameterSpec:
        if "name" not in entry:
            raise self.error(f"{where}: missing required key 'name'")
        name = entry["name"]
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise self.error(
                f"{where}: name {_show(name)} is not valid (a letter, then letters, digits or '_')"
            )
        label = f"{where} ({name})"
        if "type" not in entry:
            raise self.error(f"{label}: missing required key 'type'")
        hp_type = entry["type"]
        if not isinstance(hp_type, str) or hp_type not in _HP_KEYS:
            raise self.error(f"{label}: type {_show(hp_type)} is unknown (expected {', '.join(HP_TYPES)})")
        self.check_keys(
            entry, _HP_KEYS[hp_type], label, f" (type {hp_type} takes {', '.join(_HP_KEYS[hp_type])})"
        )
        if hp_type == "int":
            spec = self.int_spec(entry, name, label)
        elif hp_type == "float":
            spec = self.float_spec(entry, name, label)
        elif hp_type == "choice":
            spec = self.choice_spec(entry, name, label)
        elif hp_type == "boolean":
            default = entry.get("default")
            if default is not None and type(default) is not bool:
                raise self.error(f"{label}: default must be true or false, got {_show(default)}")
            spec = HyperparameterSpec(name, "boolean", default=default)
        else:
            if "value" not in entry:
                raise self.error(f"{label}: missing required key 'value'")
            spec = HyperparameterSpec(name, "fixed", value=self.scalar(entry["value"], label, "value"))
        if "when" in entry:
            spec = replace(spec, condition=self.condition(entry["when"], label, known, in_repeat))
        return spec

    def int_spec(self, entry: Mapping, name: str, label: str) -> HyperparameterSpec:
        low, high = self.integer(entry, "min", label), self.integer(entry, "max", label)
        if low > high:
            raise self.error(f"{label}: min ({low}) > max ({high})")
        sampling = self.sampling(entry, label, low)
        step = self.integer(entry, "step", label) if entry.get("step") is not None else None
        if step is not None and step < (2 if sampling == "log" else 1):
            needed = "a multiplier >= 2 under log sampling" if sampling == "log" else ">= 1"
            raise self.error(f"{label}: step must be {needed}, got {step}")
        spec = HyperparameterSpec(name, "int", min=low, max=high, step=step, sampling=sampling)
        if entry.get("default") is not None:
            default = self.integer(entry, "default", label)
            if not _int_contains(spec, default):
                raise self.error(f"{label}: default ({default}) is not one of its values")
            spec = replace(spec, default=default)
        return spec

    def float_spec(self, entry: Mapping, name: str, label: str) -> HyperparameterSpec:
        low, high = self.number(entry, "min", label), self.number(entry, "max", label)
        if low > high:
            raise self.error(f"{label}: min ({low:g}) > max ({high:g})")
        if not math.isfinite(high - low):
            raise self.error(f"{label}: the range {low:g}..{high:g} is too wide")
        sampling = self.sampling(entry, label, low)
        step = self.number(entry, "step", label) if entry.get("step") is not None else None
        if step is not None and step <= (1 if sampling == "log" else 0):
            needed = "a multiplier > 1 under log sampling" if sampling == "log" else "> 0"
            raise self.error(f"{label}: step must be {needed}, got {step:g}")
        spec = HyperparameterSpec(name, "float", min=low, max=high, step=step, sampling=sampling)
        if step is not None and _numeric_count(spec) is None:
            raise self.error(f"{label}: step {step:g} gives too many values for the range {low:g}..{high:g}")
        if entry.get("default") is not None:
            default = self.number(entry, "default", label)
            if not low <= default <= high:
                raise self.error(f"{label}: default ({default:g}) is outside min..max")
            spec = replace(spec, default=default)
        return spec

    def choice_spec(self, entry: Mapping, name: str, label: str) -> HyperparameterSpec:
        values = entry.get("values")
        if not isinstance(values, list) or not values:
            raise self.error(f"{label}: values must be a non-empty list, got {_show(values)}")
        checked = [self.scalar(v, label, f"values[{i}]") for i, v in enumerate(values)]
        types = sorted({type(v).__name__ for v in checked})
        if len(types) > 1:
            raise self.error(f"{label}: values mix types ({', '.join(types)}); use one type")
        for index, value in enumerate(checked):
            if value in checked[:index]:
                raise self.error(f"{label}: values contain {value!r} more than once")
        spec = HyperparameterSpec(name, "choice", values=tuple(checked))
        default = entry.get("default")
        if default is not None:
            if not spec.contains(default):
                raise self.error(f"{label}: default {_show(default)} is not one of its values")
            spec = replace(spec, default=default)
        return spec

    def condition(
        self, raw: object, label: str, known: Mapping[str, HyperparameterSpec], in_repeat: bool
    ) -> tuple[str, tuple]:
        if not isinstance(raw, Mapping):
            raise self.error(f"{label}: 'when' must be a mapping with parent and values, got {_kind(raw)}")
        self.check_keys(raw, ("parent", "values"), f"{label} 'when'")
        parent = raw.get("parent")
        if not isinstance(parent, str):
            raise self.error(f"{label}: 'when' needs a parent name, got {_show(parent)}")
        if parent not in known:
            scope = " in this repeat" if in_repeat else ""
            raise self.error(
                f"{label}: 'when' refers to {_show(parent)} which is not declared before it{scope}"
            )
        parent_spec = known[parent]
        if parent_spec.type not in ("choice", "int", "boolean"):
            raise self.error(
                f"{label}: 'when' parent '{parent}' is a {parent_spec.type}; parents are choice, int or boolean"
            )
        values = raw.get("values")
        if not isinstance(values, list) or not values:
            raise self.error(f"{label}: 'when' values must be a non-empty list, got {_show(values)}")
        for index, value in enumerate(values):
            if not parent_spec.contains(value):
                raise self.error(f"{label}: 'when' value {_show(value)} is not a value of '{parent}'")
            if value in values[:index]:
                raise self.error(f"{label}: 'when' values contain {value!r} more than once")
        return parent, tuple(values)

    def integer(self, entry: Mapping, key: str, label: str) -> int:
        if key not in entry:
            raise self.error(f"{label}: missing required key '{key}'")
        value = entry[key]
        if type(value) is not int:
            raise self.error(f"{label}: {key} must be an integer, got {_show(value)}")
        if abs(value) > _INT_LIMIT:
            raise self.error(f"{label}: {key} ({value}) is beyond 2**53")
        return value

    def number(self, entry: Mapping, key: str, label: str) -> float:
        if key not in entry:
            raise self.error(f"{label}: missing required key '{key}'")
        value = entry[key]
        if type(value) not in (int, float) or (type(value) is int and abs(value) > _INT_LIMIT):
            raise self.error(f"{label}: {key} must be a number, got {_show(value)}")
        if not math.isfinite(value):
            raise self.error(f"{label}: {key} must be finite, got {value}")
        return float(value)

    def scalar(self, value: object, label: str, key: str) -> Scalar:
        if type(value) not in _SCALAR_TYPES:
            raise self.error(f"{label}: {key} must be a number, string or boolean, got {_kind(value)}")
        if type(value) is float and not math.isfinite(value):
            raise self.error(f"{label}: {key} must be finite, got {value}")
        if type(value) is int and abs(value) > _INT_LIMIT:
            raise self.error(f"{label}: {key} ({value}) is beyond 2**53")
        return value  # type: ignore[return-value]

    def sampling(self, entry: Mapping, label: str, low: float) -> str:
        sampling = entry.get("sampling", "linear")
        if sampling not in ("linear", "log"):
            raise self.error(f"{label}: sampling {_show(sampling)} is unknown (expected linear, log)")
        if sampling == "log" and low <= 0:
            raise self.error(f"{label}: log sampling needs min > 0, got {low:g}")
        return sampling  # type: ignore[return-value]

    # --- checks against the family's builder ---

    def check_family(self, family: Family) -> None:
        for need in family.needs:
            if not need.per_unit:
                self.check_global_need(family, need)
        graph_needs = self.graph_needs(family)
        for need in graph_needs:
            self.check_global_need(family, need)
        counts = _small_int_values(self.by_name[family.count]) or ()
        expected = {need.name for need in family.needs if not need.per_unit} | {n.name for n in graph_needs}
        for unit in range(max(counts, default=0)):
            needed = {c for c in counts if c > unit}
            for need in family.needs:
                if need.per_unit:
                    expected.add(f"{need.name}_{unit}")
                    self.check_unit_need(family, need, unit, needed)
        for spec in self.specs:
            if spec.name not in expected:
                reads = ", ".join(
                    [n.name + ("_<i>" if n.per_unit else "") for n in family.needs]
                    + list(family.graph.names if family.graph else ())
                )
                raise self.error(
                    f"{self.label(spec.name)}: not used by family '{family.name}' (it reads {reads})"
                )

    def graph_needs(self, family: Family) -> tuple[Need, ...]:
        """The needs a graph family reads from the declared graph (a cell's edges); () for others."""
        if family.graph is None:
            return ()
        declared = {spec.name: _listed_values(spec) for spec in self.specs}
        try:
            return family.graph.expand(declared)
        except SpaceProblem as problem:
            if problem.field in self.by_name:
                raise self.error(f"{self.label(problem.field)}: {problem}") from None
            raise self.error(f"family '{family.name}': {problem}") from None

    def check_global_need(self, family: Family, need: Need) -> None:
        spec = self.by_name.get(need.name)
        if spec is None:
            if need.default is None:
                raise self.error(
                    f"family '{family.name}' needs hyperparameter '{need.name}' ({_KIND_TEXT[need.kind]}), "
                    "which is not declared"
                )
            return
        self.check_need_values(family, need, spec)
        if spec.condition is not None:
            raise self.error(
                f"{self.label(spec.name)}: family '{family.name}' reads it in every architecture, so it cannot have 'when'"
            )

    def check_unit_need(self, family: Family, need: Need, unit: int, needed: set[int]) -> None:
        name = f"{need.name}_{unit}"
        gate_name, gate_values = (f"{need.gate[0]}_{unit}", set(need.gate[1])) if need.gate else ("", set())
        gate_spec = self.by_name.get(gate_name)
        if need.gate:
            gate_values &= set(gate_spec._finite_values()) if gate_spec is not None else set()
        spec = self.by_name.get(name)
        if spec is None:
            if need.default is None and (not need.gate or gate_values):
                when = f" when {gate_name} is {', '.join(sorted(gate_values))}" if need.gate else ""
                raise self.error(
                    f"family '{family.name}' needs '{name}' for {family.unit} {unit}{when} "
                    f"({family.count} can be {max(needed)}), which is not declared"
                )
            return
        self.check_need_values(family, need, spec)
        chain = _chain(self.by_name, spec)
        for parent, allowed in chain:
            if parent == family.count and needed <= set(allowed):
                continue
            if need.gate and parent == gate_name and gate_values <= set(allowed):
                continue
            gate_text = f" and {gate_name} is {', '.join(sorted(gate_values))}" if need.gate else ""
            raise self.error(
                f"{self.label(name)}: active only when {parent} is in {list(allowed)}, but {family.unit} {unit} "
                f"needs it whenever {family.count} > {unit}{gate_text}"
            )

    def check_need_values(self, family: Family, need: Need, spec: HyperparameterSpec) -> None:
        label = self.label(spec.name)
        if not _fits_kind(spec, need.kind):
            raise self.error(
                f"{label}: family '{family.name}' needs {_KIND_TEXT[need.kind]}, got type {spec.type}"
            )
        if need.kind == "str":
            for value in spec._finite_values():
                if value not in need.allowed:
                    raise self.error(
                        f"{label}: {value!r} is not allowed by family '{family.name}' (expected {', '.join(need.allowed)})"
                    )
        elif need.kind in ("int", "float"):
            extremes = (spec.min, spec.max) if spec.type in ("int", "float") else spec._finite_values()
            for value in extremes:
                if not need.low <= value <= need.high:  # type: ignore[operator]
                    raise self.error(
                        f"{label}: {value!r} is outside {need.low:g}..{need.high:g}, the range family "
                        f"'{family.name}' allows"
                    )


# --- helpers ---------------------------------------------------------------------------


def _chain(by_name: Mapping[str, HyperparameterSpec], spec: HyperparameterSpec) -> list[tuple[str, tuple]]:
    chain = []
    while spec.condition is not None:
        chain.append(spec.condition)
        spec = by_name[spec.condition[0]]
    return chain


def _fits_kind(spec: HyperparameterSpec, kind: str) -> bool:
    if spec.type in ("int", "float", "boolean"):
        return {"int": "int", "float": "float", "boolean": "bool"}[spec.type] == kind
    value_types = {type(v) for v in spec._finite_values()}
    allowed = {"int": {int}, "float": {int, float}, "bool": {bool}, "str": {str}}[kind]
    return value_types <= allowed


def _int_contains(spec: HyperparameterSpec, value: int) -> bool:
    if not spec.min <= value <= spec.max:  # type: ignore[operator]
        return False
    if spec.sampling == "log":
        if spec.step is None:
            return True
        candidate = spec.min
        while candidate <= spec.max:  # type: ignore[operator]
            if candidate == value:
                return True
            candidate *= spec.step  # type: ignore[operator]
        return False
    return (value - spec.min) % (spec.step or 1) == 0  # type: ignore[operator]


def _numeric_count(spec: HyperparameterSpec) -> int | None:
    """Number of values of an int/float, the way Keras Tuner enumerates them; None if unbounded."""
    if spec.type == "int" and spec.step is None:
        return spec.max - spec.min + 1  # type: ignore[operator]
    if spec.step is None:
        return None
    # Keras Tuner's own arithmetic (Numerical._get_n_values): with floats it can leave out
    # max, e.g. 0..0.5 step 0.1 gives 5 values because 0.5 // 0.1 == 4.0.
    if spec.sampling == "log":
        count = math.log(spec.max / spec.min, spec.step) + 1e-8  # type: ignore[operator]
    else:
        count = (spec.max - spec.min) // spec.step  # type: ignore[operator]
    return int(count) + 1 if math.isfinite(count) else None


def _listed_values(spec: HyperparameterSpec) -> tuple | None:
    """Every value a hyperparameter can take, or None when it is continuous or a wide range."""
    if spec.type in ("choice", "fixed", "boolean"):
        return spec._finite_values()
    return _small_int_values(spec)


def _small_int_values(spec: HyperparameterSpec) -> tuple[int, ...] | None:
    """The values of a unit count, or None if it is not a small non-negative integer."""
    if spec.type == "int" and spec.min >= 0 and spec.max <= MAX_REPEAT:  # type: ignore[operator]
        return tuple(v for v in range(spec.min, spec.max + 1) if _int_contains(spec, v))  # type: ignore[arg-type]
    if spec.type in ("choice", "fixed"):
        values = spec._finite_values()
        if all(type(v) is int and 0 <= v <= MAX_REPEAT for v in values):
            return tuple(sorted(values))  # type: ignore[arg-type]
    return None


def _optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate)
    return keras.optimizers.Adam(learning_rate)


def _kind(value: object) -> str:
    return "nothing" if value is None else type(value).__name__


def _show(value: object) -> str:
    """A short repr for messages; user values can be huge or span lines."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _one_line(message: str) -> str:
    return " ".join(message.splitlines())
