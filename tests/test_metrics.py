import numpy as np
import pytest
import torch

from pyro_sparse_bnn.metrics import (
    accuracy,
    brier_score,
    categorical_nll,
    central_interval,
    expected_calibration_error,
    expected_entropy,
    gaussian_nll,
    interval_coverage,
    mutual_information,
    predictive_entropy,
    reliability_curve,
    rmse,
)

# Three examples, two classes: predictions 0, 1, 1 against labels 0, 0, 1.
PROBS = torch.tensor([[0.7, 0.3], [0.4, 0.6], [0.2, 0.8]])
Y = torch.tensor([0, 0, 1])


def test_accuracy_hand_value():
    assert accuracy(PROBS, Y) == pytest.approx(2 / 3)


def test_categorical_nll_hand_value():
    # -(ln 0.7 + ln 0.4 + ln 0.8) / 3 = (0.35667494 + 0.91629073 + 0.22314355) / 3
    assert categorical_nll(PROBS, Y) == pytest.approx(0.49870307, abs=1e-7)


def test_categorical_nll_clamps_zero_probability():
    nll = categorical_nll(torch.tensor([[1.0, 0.0]]), torch.tensor([1]))
    assert nll == pytest.approx(27.631021, abs=1e-5)  # -ln(1e-12)


def test_brier_score_hand_value():
    # (0.09 + 0.09) + (0.36 + 0.36) + (0.04 + 0.04) = 0.98, over 3 examples
    assert brier_score(PROBS, Y) == pytest.approx(0.32666667, abs=1e-6)


def test_ece_hand_value():
    # 10 bins: confidences 0.7, 0.6, 0.8 fall in separate bins, correctness 1, 0, 1.
    # gaps |1 - 0.7| + |0 - 0.6| + |1 - 0.8| = 1.1, each weighted 1/3.
    assert expected_calibration_error(PROBS, Y, n_bins=10) == pytest.approx(0.36666667, abs=1e-6)
    # 2 bins: all three in (0.5, 1]; accuracy 2/3 vs mean confidence 0.7.
    assert expected_calibration_error(PROBS, Y, n_bins=2) == pytest.approx(0.03333333, abs=1e-6)


def test_ece_over_confident_hand_value():
    # Ten predictions all made with confidence 0.9, only six of them right: ECE = 0.9 - 0.6.
    probs = torch.tensor([[0.9, 0.1]] * 10)
    y = torch.tensor([0] * 6 + [1] * 4)
    assert expected_calibration_error(probs, y) == pytest.approx(0.3, abs=1e-6)


def test_ece_near_zero_when_calibrated():
    # p ~ U(0, 1), y ~ Bernoulli(p): P(correct | confidence c) = c exactly. With 100,000 examples
    # over ~8 filled bins the per-bin accuracy has sd <= 0.5 / sqrt(12,500) = 0.0045, so the ECE
    # (a weighted mean of |noise|) is about 0.0035; 0.01 is a safe bound.
    gen = torch.Generator().manual_seed(0)
    p = torch.rand(100_000, generator=gen, dtype=torch.float64)
    y = torch.bernoulli(p, generator=gen).long()
    probs = torch.stack([1 - p, p], dim=-1)
    assert expected_calibration_error(probs, y) < 0.01


def test_reliability_curve_matches_ece():
    curve = reliability_curve(PROBS, Y, n_bins=10)
    np.testing.assert_allclose(curve["bin_edges"], np.linspace(0, 1, 11))
    assert curve["bin_count"].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 0, 0]
    filled = curve["bin_count"] > 0
    np.testing.assert_allclose(curve["bin_confidence"][filled], [0.6, 0.7, 0.8], atol=1e-6)
    np.testing.assert_allclose(curve["bin_accuracy"][filled], [0.0, 1.0, 1.0])
    assert np.isnan(curve["bin_accuracy"][~filled]).all()
    gap = np.abs(curve["bin_accuracy"] - curve["bin_confidence"])[filled]
    ece = expected_calibration_error(PROBS, Y, n_bins=10)
    assert ece == pytest.approx(gap.mean())


def test_predictive_entropy_hand_values():
    probs = torch.tensor([[0.5, 0.5], [0.7, 0.3], [1.0, 0.0]])
    # ln 2; 0.7 * 0.35667494 + 0.3 * 1.2039728; 0 (with 0 ln 0 = 0)
    expected = torch.tensor([0.69314718, 0.61086430, 0.0])
    torch.testing.assert_close(predictive_entropy(probs), expected)


def test_mutual_information_zero_when_draws_agree():
    draws = PROBS.expand(5, 3, 2)
    torch.testing.assert_close(mutual_information(draws), torch.zeros(3))
    torch.testing.assert_close(expected_entropy(draws), predictive_entropy(PROBS))


def test_mutual_information_two_disagreeing_draws():
    draws = torch.tensor([[[0.9, 0.1]], [[0.1, 0.9]]])
    # H(mean) = ln 2 = 0.69314718; each draw's entropy 0.9 * 0.10536052 + 0.1 * 2.30258509
    # = 0.32508297; MI = 0.69314718 - 0.32508297.
    torch.testing.assert_close(mutual_information(draws), torch.tensor([0.36806421]))
    torch.testing.assert_close(expected_entropy(draws), torch.tensor([0.32508297]))


def test_rmse_hand_value():
    # errors 0, 1, -2: sqrt(5 / 3)
    assert rmse(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 3.0, 1.0])) == pytest.approx(
        1.29099445
    )


def test_gaussian_nll_hand_value():
    # 0.5 ln(2 pi) = 0.91893853 per term; + z^2 / 2 + ln std with z = 0, 1, -1 and std = 1, 1, 2:
    # (0.91893853 + 1.41893853 + 2.11208571) / 3
    nll = gaussian_nll(
        torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 1.0, 2.0]), torch.tensor([1.0, 3.0, 1.0])
    )
    assert nll == pytest.approx(1.48332092, abs=1e-7)


def test_gaussian_nll_scalar_std_and_validation():
    assert gaussian_nll(torch.zeros(3), 1.0, torch.zeros(3)) == pytest.approx(0.91893853)
    with pytest.raises(ValueError, match="std"):
        gaussian_nll(torch.zeros(3), torch.tensor([1.0, 0.0, 1.0]), torch.zeros(3))
    with pytest.raises(ValueError, match="std"):
        gaussian_nll(torch.zeros(3), torch.ones(2), torch.zeros(3))


def test_interval_coverage_hand_value():
    lower, upper = torch.zeros(4), torch.ones(4)
    # 0 and 1 are inside (closed interval), 0.5 inside, 1.5 outside.
    assert interval_coverage(lower, upper, torch.tensor([0.0, 0.5, 1.0, 1.5])) == 0.75


def test_central_interval_matches_numpy_quantile():
    draws = torch.randn(101, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lower, upper = central_interval(draws, level=0.8)
    np.testing.assert_allclose(lower.numpy(), np.quantile(draws.numpy(), 0.1, axis=0))
    np.testing.assert_allclose(upper.numpy(), np.quantile(draws.numpy(), 0.9, axis=0))


def test_central_interval_coverage_of_standard_normal():
    # S = 1,000 draws of N(0, 1) per example give the 90 % interval; y ~ N(0, 1) for n = 4,000
    # examples. Coverage is 0.9 up to an O(1/S) bias and a binomial sd sqrt(0.09 / 4000) = 0.0047:
    # tolerance 0.02 (about 4 sd).
    gen = torch.Generator().manual_seed(0)
    draws = torch.randn(1000, 4000, generator=gen)
    y = torch.randn(4000, generator=gen)
    lower, upper = central_interval(draws, level=0.9)
    assert interval_coverage(lower, upper, y) == pytest.approx(0.9, abs=0.02)
    # and the endpoints themselves sit near the N(0, 1) quantiles -+1.6449 (sd ~0.07 each).
    assert lower.mean().item() == pytest.approx(-1.6449, abs=0.02)
    assert upper.mean().item() == pytest.approx(1.6449, abs=0.02)


@pytest.mark.parametrize(
    "fn", [accuracy, categorical_nll, brier_score, expected_calibration_error, reliability_curve]
)
def test_classification_validation(fn):
    with pytest.raises(ValueError, match="y"):
        fn(PROBS, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="probs"):
        fn(PROBS.flatten(), Y)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fn(PROBS, torch.tensor([0, 2, 1]))
    with pytest.raises(TypeError, match="y"):
        fn(PROBS, Y.float())


@pytest.mark.parametrize("n_bins", [0, -3])
def test_n_bins_validation(n_bins):
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(PROBS, Y, n_bins=n_bins)


def test_entropy_validation():
    with pytest.raises(ValueError, match="probs"):
        predictive_entropy(PROBS.unsqueeze(0))
    with pytest.raises(ValueError, match="draw_probs"):
        mutual_information(PROBS)


@pytest.mark.parametrize("level", [0.0, 1.0, 1.5, -0.1])
def test_level_validation(level):
    with pytest.raises(ValueError, match="level"):
        central_interval(torch.randn(10, 3), level=level)


def test_regression_length_validation():
    with pytest.raises(ValueError, match="y"):
        rmse(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="upper"):
        interval_coverage(torch.zeros(3), torch.ones(4), torch.zeros(3))
    with pytest.raises(ValueError, match="lower"):
        interval_coverage(torch.ones(3), torch.zeros(3), torch.zeros(3))


def test_integer_regression_inputs_are_accepted():
    assert rmse(torch.tensor([1, 2, 3]), torch.tensor([1, 3, 1])) == pytest.approx(1.29099445)
    lower, upper = central_interval(torch.arange(11).unsqueeze(-1), level=0.8)
    assert (lower.item(), upper.item()) == pytest.approx((1.0, 9.0))
