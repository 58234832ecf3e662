"""Apply an albumentations pipeline to one image: the same bytes as pipeline(image=...)["image"], cheaper.

A build augments hundreds of thousands of small images, and at CIFAR size albumentations'
per-call bookkeeping costs several times the pixel work: the notebook policy's full call takes
~105 us an image, of which OpenCV's warpAffine is ~12. The steps here skip work whose result
an image-only call never uses, and nothing else: every random draw is made by the library's own
code, in the library's order, so the random streams and the output bytes stay identical.
tests/test_policies.py holds each path to the full call's bytes over many seeds; any pipeline
or transform these steps do not know takes the full call.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from .albumentations_import import A, BasicTransform, fgeometric

Step = Callable[[np.ndarray], np.ndarray]

# The albumentations releases whose BasicTransform.__call__ and Affine internals the steps below
# follow (their private helpers were renamed within 2.0.x); under any other release every
# transform takes its full call: the same bytes, at the library's own speed.
FOLLOWED_RELEASES = ("2.0.8",)


def image_applier(pipeline: A.BaseCompose) -> Step:
    """A function image -> pipeline(image=image)["image"].

    For a plain Compose without bbox or keypoint processors, Compose.__call__ draws once for
    its own p, checks target shapes (which concern other targets only), then calls each
    transform in turn: that is what this does, each transform through its cheapest exact step.
    """
    if type(pipeline) is not A.Compose or pipeline.processors or pipeline.save_applied_params:
        return lambda image: pipeline(image=image)["image"]
    steps, p = [transform_step(t) for t in pipeline.transforms], pipeline.p

    def apply(image: np.ndarray) -> np.ndarray:
        if not pipeline.py_random.random() < p:  # the draw Compose makes, so the random streams stay in step
            return image
        for step in steps:
            image = step(image)
        return image

    return apply


def transform_step(transform) -> Step:
    """The cheapest exact image-only step for one transform of a plain Compose."""
    standard = (
        A.__version__ in FOLLOWED_RELEASES
        and isinstance(transform, BasicTransform)
        and type(transform).__call__ is BasicTransform.__call__
        and type(transform).apply_with_params is BasicTransform.apply_with_params
        and not transform.replay_mode
        and not transform.deterministic
        and set(transform.targets_as_params) <= {"image"}
    )
    if not standard:
        return lambda image: transform(image=image)["image"]
    if type(transform) is A.Affine and not transform.fit_output:
        return affine_step(transform)
    return direct_step(transform)


def direct_step(transform: BasicTransform) -> Step:
    """BasicTransform.__call__ for an image alone, without the per-target dispatch and copies."""
    apply_to_image = transform._key2func["image"]

    def step(image: np.ndarray) -> np.ndarray:
        if not transform.should_apply():
            return image
        data = {"image": image}
        params = transform.update_transform_params(transform.get_params(), data)
        params.update(transform.get_params_dependent_on_data(params, data))
        out = apply_to_image(np.ascontiguousarray(image), **params)
        return np.ascontiguousarray(out)

    return step


def affine_step(affine: A.Affine) -> Step:
    """A.Affine on an image: the same draws in the same order (the transform's own helpers),
    the image's matrix by the library's own function, then the library's warp. The full call
    also builds a second matrix for bounding boxes and tests for identity with np.allclose
    (~25 us); both are done more cheaply or not at all here."""

    def step(image: np.ndarray) -> np.ndarray:
        if image.ndim != 3 or image.shape[2] != 3:  # OpenCV reshapes others; the library handles them
            return affine(image=image)["image"]
        if not affine.should_apply():
            return image
        shape = image.shape[:2]
        translate = affine._get_translate_params(shape)
        shear = affine._get_shear_params()
        scale = affine._get_scale(affine.scale, affine.keep_ratio, affine.balanced_scale, affine.py_random)
        rotate = affine.py_random.uniform(*affine.rotate)
        matrix = fgeometric.create_affine_transformation_matrix(
            translate, shear, scale, rotate, fgeometric.center(shape)
        )
        if is_identity(matrix):
            return image
        return cv2.warpAffine(
            np.ascontiguousarray(image),
            matrix[:2, :],
            (shape[1], shape[0]),
            flags=affine.interpolation,
            borderMode=affine.border_mode,
            borderValue=fgeometric.extend_value(affine.fill, image.shape[2]),
        )

    return step


def is_identity(matrix: np.ndarray) -> bool:
    """np.allclose(matrix, np.eye(3)) (rtol 1e-5, atol 1e-8), in plain floats: ~1 us instead of ~25."""
    for i, row in enumerate(matrix.tolist()):
        for j, value in enumerate(row):
            target = 1.0 if i == j else 0.0
            if not abs(value - target) <= 1e-8 + 1e-5 * target:
                return False
    return True
