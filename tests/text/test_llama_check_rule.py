"""The llama.cpp check's rounding-flip rule: a sample that agrees up to a token and then differs a little is a
flip of llama.cpp's activation rounding; one that differs from the first token is a wrong adapter."""

import numpy as np

from extension.text.llama_check import FLIP_MAX, _rounding_flip


def test_agreeing_sample_has_no_flip():
    assert _rounding_flip(np.array([1e-6, 2e-6, 1e-6]), 1e-3) is None


def test_late_small_difference_is_a_flip():
    tokens = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.035, 0.024, 0.029])  # measured on a Q4_K_M qwen3 base
    assert _rounding_flip(tokens, 1e-3) == 5


def test_difference_from_the_first_token_is_not_a_flip():
    assert _rounding_flip(np.array([0.03, 0.02, 0.02]), 1e-3) is None


def test_large_difference_is_not_a_flip():
    assert _rounding_flip(np.array([0.0, 0.0, 2 * FLIP_MAX]), 1e-3) is None
