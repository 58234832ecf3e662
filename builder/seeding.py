"""Each sample's random state: sample (source i, copy k) of a build draws from a state that depends on (seed, i, k)
alone, so a store's bytes do not depend on worker count, chunk order or resumption (the workers, and the policy
checks replaying a draw, seed the pipeline through SampleSeeder)."""

from __future__ import annotations

import random

import numpy as np

from .albumentations_import import A

MASK64 = (1 << 64) - 1


def mix64(x: int) -> int:
    """splitmix64's finalizer: spreads nearby integers over all 64 bits."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & MASK64
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & MASK64
    return x ^ (x >> 31)


class GeneratorRandom(random.Random):
    """A random.Random that draws from a numpy Generator, so one cheap state reset
    reseeds both of albumentations' random sources (random.Random.seed costs ~6 us).
    Uniforms are drawn BATCH at a time: one numpy call costs what ~10 scalar draws do."""

    BATCH = 16

    def __init__(self, generator: np.random.Generator):
        self.generator = generator
        super().__init__(0)
        self.refill()

    def refill(self) -> None:
        self.values = iter(self.generator.random(self.BATCH).tolist())

    def random(self) -> float:
        value = next(self.values, None)
        if value is None:
            self.refill()
            value = next(self.values)
        return value

    def getrandbits(self, k: int) -> int:
        if k <= 53:
            # random() is a multiple of 2**-53, so this is exactly k uniform bits, from the batch
            # (randint and choice land here: ~0.3 us instead of ~2.5 for a numpy scalar draw)
            return int(self.random() * (1 << k))
        if k <= 63:
            return int(self.generator.integers(0, 1 << k))
        return int.from_bytes(self.generator.bytes((k + 7) // 8), "little") >> (-k % 8)


class SampleSeeder:
    """Gives sample (source i, copy k) a random state that depends on (seed, i, k) alone,
    so a store's bytes do not depend on worker count, chunk order or resumption.

    The pipeline shares one numpy Generator (and a random.Random drawing from it);
    reseeding sets the generator's PCG64 state in place: ~3 us, against ~30 us for
    pipeline.set_random_seed().
    """

    def __init__(self, pipeline: A.Compose, seed: int):
        self.seed_key = mix64(seed & MASK64)
        self.generator = np.random.Generator(np.random.PCG64(0))
        self.state = self.generator.bit_generator.state
        self.py_random = GeneratorRandom(self.generator)
        pipeline.set_random_state(self.generator, self.py_random)

    def reseed(self, source_index: int, copy_index: int) -> None:
        key = mix64(mix64(self.seed_key ^ source_index) ^ (copy_index << 48))
        self.state["state"]["state"] = (mix64(key ^ 0x9E3779B97F4A7C15) << 64) | key
        self.state["state"]["inc"] = 1
        self.state["has_uint32"] = 0
        self.generator.bit_generator.state = self.state
        self.py_random.refill()
