"""Small shuffled `digits` splits for the compression tests (a plain module on sys.path)."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import keras
import numpy as np
from sklearn.datasets import load_digits


def digits_splits(train: int = 1400, val: int = 0) -> SimpleNamespace:
    """8x8x1 images in [0, 1]: the first ``train`` for training, ``val`` for validation, the rest test."""
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], digits.target[order]
    split = SimpleNamespace(x_train=x[:train], y_train=y[:train])
    split.x_val, split.y_val = x[train : train + val], y[train : train + val]
    split.x_test, split.y_test = x[train + val :], y[train + val :]
    return split


def trained_classifier(build: Callable[[], keras.Model], x_train, y_train, *, epochs: int = 6) -> keras.Model:
    """The softmax classifier ``build`` makes, seeded with 0 before it is built, trained on the split.

    ``build`` is called after seeding so that the layers' initial weights, and with them every
    accuracy a test checks, are the same on every run.
    """
    keras.utils.set_random_seed(0)
    model = build()
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    return model
