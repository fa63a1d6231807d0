"""Checks against the full CIFAR-10 copy in ../shared/data (present on CI and developer machines, not on a
user's): skipped, saying why, when it is absent."""

import numpy as np
import pytest

from recipes.config import DataConfig
from recipes.data import load_data
from tests.conftest import SHARED_CIFAR

pytestmark = [
    pytest.mark.full_data,
    pytest.mark.skipif(
        not SHARED_CIFAR.exists(),
        reason=f"needs the full CIFAR-10 copy at {SHARED_CIFAR} (only CI and the dev "
        "machines have it; the bundled sample covers everything else)",
    ),
]


def test_full_archive_loads_with_the_official_splits():
    data = load_data(DataConfig(name="cifar10", path=str(SHARED_CIFAR)))
    assert data.x_train.shape == (45000, 32, 32, 3) and data.x_val.shape == (5000, 32, 32, 3)
    assert data.x_test.shape == (10000, 32, 32, 3)
    assert np.bincount(data.y_test).tolist() == [1000] * 10  # the official test set is balanced
    assert np.bincount(np.concatenate([data.y_train, data.y_val])).tolist() == [5000] * 10
    assert not data.is_sample


def test_bundled_sample_matches_the_archive(sample_arrays):
    from recipes.data import read_cifar

    x_train, y_train, x_test, y_test = read_cifar(SHARED_CIFAR)
    np.testing.assert_array_equal(sample_arrays[1], y_train[:5000])
    np.testing.assert_array_equal(sample_arrays[3], y_test[:1000])
    # JPEG at quality 95: pixels within a few levels on average
    assert np.abs(sample_arrays[0].astype(int) - x_train[:5000]).mean() < 3
