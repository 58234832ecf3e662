"""A policy must give every row the image's shape and uint8 dtype, on every draw, not only on one.

A store row is the policy's output for one (source image, copy) draw. A transform that changes
the shape or dtype on some draws only (p < 1, one branch of a OneOf, a random output size) would
give garbage rows, or a traceback hours into a build. Three nets:

1. check_policy, before the build: the image's possible (shape, dtype) states are carried through
   the pipeline tree the way albumentations 2's composes run it (every branch a draw can take),
   each leaf transform run alone, forced to apply, on test images of each state it can receive
   (several images and seeds, since crop or random sizes may depend on them). A policy whose
   output can end in another state is refused, naming the transform that left the image's state.
2. check_policy then runs the whole pipeline over DRAWS seeded draws, as the build runs it.
3. During the build, the worker checks each row as it is computed (worker.compute_chunk) and,
   on a bad one, explain_sample replays that draw transform by transform to name the culprit.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from augzarr.errors import UserError
from augzarr.wording import article

from .albumentations_import import A, BaseCompose, BasicTransform
from .applier import image_applier
from .seeding import SampleSeeder

UINT8 = np.dtype(np.uint8)
PROBE_SEEDS = 8  # draws of each leaf transform on each test image
DRAWS = 64  # seeded draws of the whole pipeline
STAGED_TEST_PIXELS = 2048 * 2048  # the largest test image check_staged_policy makes
MAX_ORDERS = 2000  # SomeOf selections enumerated one by one; beyond, any order of any choice is assumed
RULE = "a policy must keep the image's shape and uint8 dtype"

State = tuple  # (shape, dtype name) of an image, or ("error",) after a transform failed on it


def state_of(image) -> State:
    if not isinstance(image, np.ndarray):
        return (("not an array",), type(image).__name__)
    return (tuple(image.shape), image.dtype.name)


def shown_state(state: State) -> str:
    shape, dtype = state
    return f"{'x'.join(map(str, shape))} {dtype}"


def transform_name(node) -> str:
    """A transform as its class and the arguments that differ from their defaults, on one line."""
    if isinstance(node, BaseCompose):
        return f"{type(node).__name__}([{', '.join(transform_name(t) for t in node.transforms)}])"
    try:
        args = {**node.get_transform_init_args(), **node.get_base_init_args()}
        defaults = inspect.signature(type(node).__init__).parameters
    except Exception:  # a transform without albumentations' introspection: its class name will do
        return type(node).__name__
    shown = []
    for key, value in args.items():
        if key not in defaults:  # a field derived from the arguments (PadIfNeeded's padding)
            continue
        default = defaults[key].default
        if default is inspect.Parameter.empty or plain(default) != plain(value):
            shown.append(f"{key}={value!r}")
    order = {key: i for i, key in enumerate(defaults)}
    shown.sort(key=lambda text: order[text.split("=", 1)[0]])
    return f"{type(node).__name__}({', '.join(shown)})".replace("\n", " ")


def plain(value):
    """Lists and tuples alike, so a default (0.5, 0.5) equals a stored [0.5, 0.5]."""
    if isinstance(value, (list, tuple)):
        return tuple(plain(v) for v in value)
    return value


def compose_kind(node) -> str | None:
    """How a compose runs its children, for the composes whose __call__ this module follows;
    None for a leaf and for any other compose, which is probed as a whole like a leaf."""
    call = type(node).__call__
    if call in (A.Compose.__call__, A.ReplayCompose.__call__, A.Sequential.__call__):
        return "sequence"
    if call is A.OneOf.__call__:
        return "one_of"
    if call is A.OneOrOther.__call__:
        return "one_or_other"
    if call is A.SomeOf.__call__:
        return "some_of" if type(node)._get_idx is A.SomeOf._get_idx else "any_order"
    return None


@dataclass(frozen=True)
class Change:
    """The transform that took an image out of the image's state, and how."""

    transform: object
    before: State
    after: State
    when: str  # "", " on the draws where it applies" or " on some draws"

    def message(self) -> str:
        return f"{transform_name(self.transform)} changes {article(shown_state(self.before))} image into {shown_state(self.after)}{self.when}"


class PolicyProblem(Exception):
    pass


class ShapeFlow:
    """Carries {state: the Change that made it, None for the image's own state} through a pipeline."""

    def __init__(self, image_shape: tuple[int, ...]):
        self.good: State = (tuple(image_shape), "uint8")
        self.seeds = effort(image_shape)[0]
        self.probes: dict[tuple, tuple[set, str | None]] = {}
        self.copies: dict[int, tuple] = {}

    def flow(self, node, states: dict, forced: bool, certain: bool) -> dict:
        kind = compose_kind(node)
        if kind is None:
            return self.leaf(node, states, forced, certain)
        p = node.p
        skip = p < 1 and not (forced and kind in ("sequence", "one_of"))  # SomeOf ignores force_apply
        if kind == "one_or_other":
            skip = False  # it always applies one of the two
        elif skip and p <= 0:
            return dict(states)
        out = dict(states) if skip else {}
        certain = certain and not skip
        if kind == "sequence":
            current = states
            for child in node.transforms:
                current = self.flow(child, current, False, certain)
            merge(out, current)
        elif kind in ("one_of", "one_or_other"):
            if kind == "one_of":
                branches = [t for t, weight in zip(node.transforms, getattr(node, "transforms_ps", [])) if weight > 0]
                if not branches:
                    return dict(states)
            else:
                branches = ([node.transforms[0]] if p > 0 else []) + ([node.transforms[-1]] if p < 1 else [])
            for child in branches:
                merge(out, self.flow(child, states, True, certain and len(branches) == 1))
        else:
            orders = selections(len(node.transforms), node.n, node.replace, kind == "any_order")
            if orders is None:  # too many to list: n steps of any transform, a superset of what it can pick
                current = states
                for _ in range(node.n):
                    step: dict = {}
                    for child in node.transforms:
                        merge(step, self.flow(child, current, False, False))
                    current = step
                merge(out, current)
            for order in orders or []:
                current = states
                for i in order:
                    current = self.flow(node.transforms[i], current, False, False)
                merge(out, current)
        return out

    def leaf(self, node, states: dict, forced: bool, certain: bool) -> dict:
        p = getattr(node, "p", 1.0)
        if isinstance(node, BasicTransform) and p <= 0:  # should_apply: never, even when forced
            return dict(states)
        skip = p < 1 and not forced
        out = dict(states) if skip else {}
        for state, change in states.items():
            if state == ("error",) or state[0] == ("not an array",):
                out.setdefault(state, change)  # no test image of it to probe with; it is refused anyway
                continue
            afters, error = self.probe(node, state)
            if error is not None:
                if change is None:
                    raise PolicyProblem(
                        f"{transform_name(node)} fails on {article(shown_state(state))} image ({error})"
                    )
                out.setdefault(("error",), change)  # it fails on what an earlier transform made
                continue
            when = (
                " on some draws" if state in afters else " on the draws where it applies" if skip or not certain else ""
            )
            for after in sorted(afters, key=repr):
                if after == self.good:
                    out.setdefault(after, None)
                else:
                    out.setdefault(after, change if change is not None else Change(node, state, after, when))
        return out

    def probe(self, node, state: State) -> tuple[set, str | None]:
        """The states `node` turns a `state` image into when it applies, over test images and seeds."""
        key = (id(node), state)
        if key not in self.probes:
            self.probes[key] = self.run_probe(node, state)
        return self.probes[key]

    def run_probe(self, node, state: State) -> tuple[set, str | None]:
        if id(node) not in self.copies:
            # copies: probing must not disturb the policy's own random state; a compose probed as a
            # whole runs both as it is and with every transform inside forced (p=1)
            variants = [probe_copy(node, force=False)]
            if isinstance(node, BaseCompose):
                variants.append(probe_copy(node, force=True))
            self.copies[id(node)] = (node, variants)  # node kept alive, so its id stays its own
        afters = set()
        for i, image in enumerate(test_images(state)):
            for seed in range(i * self.seeds, (i + 1) * self.seeds):
                for variant in self.copies[id(node)][1]:
                    variant.set_random_seed(seed)
                    try:
                        afters.add(state_of(variant(image=image.copy(), force_apply=True)["image"]))
                    except Exception as exc:
                        return afters, one_line(exc)
        return afters, None


def merge(into: dict, states: dict) -> None:
    for state, change in states.items():
        into.setdefault(state, change)


def selections(m: int, n: int, replace: bool, any_order: bool) -> list[tuple[int, ...]] | None:
    """The index sequences SomeOf (sorted) or RandomOrder (any order) can pick; None when too many to list."""
    n = n if replace else min(n, m)
    count = {
        (False, False): math.comb(m, n),
        (True, False): math.comb(m + n - 1, n),
        (False, True): math.perm(m, n),
        (True, True): m**n,
    }[(replace, any_order)]
    if count > MAX_ORDERS:
        return None
    pick = {
        (False, False): itertools.combinations,
        (True, False): itertools.combinations_with_replacement,
        (False, True): itertools.permutations,
        (True, True): lambda r, k: itertools.product(r, repeat=k),
    }
    return list(pick[(replace, any_order)](range(m), n))


def probe_copy(node, force: bool):
    """A copy of a transform or compose to run alone: outside a ReplayCompose (which would want its
    replay record), and with every transform inside forced to apply (p=1) when `force`."""
    probe = copy.deepcopy(node)
    stack = [probe]
    while stack:
        item = stack.pop()
        if isinstance(item, BasicTransform):
            item.deterministic = item.replay_mode = False
        if force and hasattr(item, "p"):
            item.p = 1.0
        stack.extend(getattr(item, "transforms", []))
    return probe


def test_images(state: State) -> list[np.ndarray]:
    """Flat dark and bright images, noise, and a smooth gradient, of the given shape and dtype."""
    shape, dtype = state
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(0)
    top = 255 if dtype == UINT8 else 1
    ramp = np.linspace(0, top, int(np.prod(shape)), dtype=np.float32).reshape(shape)
    noise = rng.integers(0, 256, shape, dtype=np.uint8) if dtype == UINT8 else rng.random(shape, dtype=np.float32)
    images = [np.zeros(shape, dtype), np.full(shape, top, dtype), noise, ramp]
    return [np.ascontiguousarray(image, dtype=dtype) for image in images]


def effort(image_shape: tuple[int, ...]) -> tuple[int, int]:
    """(seeds per test image and transform, whole-pipeline draws): fewer for big images, whose every
    draw costs more, while still probing each transform several times."""
    big = int(np.prod(image_shape[:2])) > 512 * 512
    return (2, 16) if big else (PROBE_SEEDS, DRAWS)


def one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")


def check_policy(spec: str, pipeline: BaseCompose, image_shape: tuple[int, ...]) -> None:
    """Refuse, before any build work, a policy that can give an image another shape or dtype."""
    flow = ShapeFlow(image_shape)
    try:
        ends = flow.flow(pipeline, {flow.good: None}, False, True)
    except PolicyProblem as exc:
        raise UserError(f"--policy {spec}: {exc}; {RULE}") from None
    problems = [change for state, change in ends.items() if state != flow.good]
    if problems:
        raise UserError(f"--policy {spec}: {problems[0].message()}; {RULE}")
    check_draws(spec, pipeline, image_shape)


def check_draws(spec: str, pipeline: BaseCompose, image_shape: tuple[int, ...]) -> None:
    """The second net: the whole pipeline as the build runs it, over DRAWS seeded draws (fewer when big)."""
    trial = copy.deepcopy(pipeline)
    seeder = SampleSeeder(trial, 0)
    apply = image_applier(trial)
    images = test_images(((tuple(image_shape)), "uint8"))
    for draw in range(effort(image_shape)[1]):
        image = images[draw % len(images)]
        seeder.reseed(draw, 1)
        try:
            fits = row_fits(apply(image.copy()), image_shape)
        except Exception:
            fits = False
        if not fits:
            problem = explain_sample(lambda: copy.deepcopy(pipeline), 0, image, draw, 1)
            raise UserError(f"--policy {spec}: {problem} on a test draw; {RULE}")


def check_staged_policy(spec: str, pipeline: BaseCompose, image_shape: tuple[int, ...], scale: float) -> None:
    """With --stage-scale, a copy is cut from the image staged up to `scale` times the stored size: the policy must
    bring such an image to the stored size on every draw (a crop or resize to it), checked over seeded draws on test
    images of the largest staged size (at most STAGED_TEST_PIXELS) and of one between."""
    height, width = image_shape[:2]
    trial = copy.deepcopy(pipeline)
    seeder = SampleSeeder(trial, 0)
    apply = image_applier(trial)
    largest = min(scale, max(1.0, math.sqrt(STAGED_TEST_PIXELS / (height * width))))  # test images of bounded memory
    sizes = [(round(height * f), round(width * f)) for f in (largest, (1 + largest) / 2)]
    images = [image for size in sizes for image in test_images(((*size, *image_shape[2:]), "uint8"))]
    for draw in range(effort((*sizes[0], *image_shape[2:]))[1]):
        seeder.reseed(draw, 1)
        image = images[draw % len(images)]
        try:
            fits = row_fits(apply(image.copy()), image_shape)
        except Exception:
            fits = False
        if not fits:
            stored = "x".join(map(str, image_shape[:2]))
            raise UserError(
                f"--policy {spec} does not turn an image staged at {image.shape[0]}x{image.shape[1]} (--stage-scale "
                f"{scale:g}) into the stored {stored} on every draw: use a policy that crops or resizes to the stored "
                "size (photo, photo-strong), or --stage-scale 1 to cut copies from the stored originals"
            )


def row_fits(out, shape: tuple[int, ...]) -> bool:
    """What a store row must be; the worker's hot loop checks `out.dtype is UINT8` first."""
    return isinstance(out, np.ndarray) and out.shape == tuple(shape) and out.dtype == UINT8


class Recorder:
    """Stands in for one transform inside a compose while a draw is replayed: records what it did."""

    def __init__(self, inner, trace: list):
        self.inner, self.trace = inner, trace

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, *args, force_apply: bool = False, **data):
        before = state_of(data.get("image"))
        try:
            result = self.inner(*args, force_apply=force_apply, **data)
        except Exception as exc:
            self.trace.append((self.inner, before, None, exc))
            raise
        self.trace.append((self.inner, before, state_of(result.get("image")), None))
        return result


def install_recorders(node, trace: list) -> None:
    for i, child in enumerate(list(node.transforms)):
        if compose_kind(child) is not None:
            install_recorders(child, trace)
        else:
            node.transforms = list(node.transforms)
            node.transforms[i] = Recorder(child, trace)


def explain_sample(
    make_pipeline: Callable[[], BaseCompose], seed: int, image: np.ndarray, source_index: int, copy_index: int
) -> str:
    """Replay draw (source_index, copy_index) transform by transform; name what broke the image.

    The replay is albumentations' full call on a fresh pipeline under the same seed: the same
    draws and bytes as the build's fast path (tests/test_policies.py holds them equal).
    """
    pipeline = make_pipeline()
    seeder = SampleSeeder(pipeline, seed)
    trace: list = []
    install_recorders(pipeline, trace)
    seeder.reseed(source_index, copy_index)
    good = state_of(image)
    try:
        final, error = state_of(pipeline(image=image.copy())["image"]), None
    except Exception as exc:
        final, error = None, exc
    culprit = None
    for transform, before, after, failed in trace:
        if failed is not None:
            if culprit is not None:
                return f"{culprit.message()}, on which {transform_name(transform)} then fails ({one_line(failed)})"
            return f"{transform_name(transform)} fails on {article(shown_state(before))} image ({one_line(failed)})"
        if before == good and after != good:
            culprit = Change(transform, before, after, "")
        elif after == good:
            culprit = None
    if error is not None:
        return f"the pipeline fails ({one_line(error)})"
    if final != good and culprit is not None:
        return culprit.message()
    if final != good:
        return f"the pipeline turns {article(shown_state(good))} image into {shown_state(final)}"
    return f"the pipeline gave a row of another shape or dtype than {article(shown_state(good))} image (not reproduced transform by transform)"


class BadSample(UserError):
    """A build worker's row that broke the rule; build.py names the sample (file names are there)."""

    def __init__(self, policy: str, problem: str, split: str, index: int, copy_index: int):
        super().__init__(policy, problem, split, index, copy_index)  # the args rebuild it across processes
        self.policy, self.problem, self.split, self.index, self.copy_index = policy, problem, split, index, copy_index

    def message(self, sample: str) -> str:
        return (
            f"--policy {self.policy}: {self.problem} on {sample}, copy {self.copy_index}; {RULE}: "
            "fix the policy, then run build-aug again (the store is left unfinished, no chunk with a bad row was written)"
        )

    def __str__(self) -> str:
        return self.message(f"source {self.split} image {self.index}")
