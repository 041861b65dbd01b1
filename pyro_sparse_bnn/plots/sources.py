"""What the relevance plots read: relevance rules, the scales they are drawn on, checked
arguments, and a result's relevance, keep-masks and draws (never its posterior predictive)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import seaborn as sns
from matplotlib.axes import Axes

from ..infer.result import FitResult
from ..sparsity import ARD_THRESHOLD, SNR_THRESHOLD
from ..validation import (
    check_choice,
)

RELEVANCE_FLOOR = 1e-6
"""SNR drawn for weights whose SNR is below it (an exactly-zero mean) on log scales; SNRs above
``1 / RELEVANCE_FLOOR`` (a zero sd) are drawn at that ceiling. ARD variances: ``RELEVANCE_FLOOR``
squared and ``1 / RELEVANCE_FLOOR``."""

_KEPT, _PRUNED = sns.color_palette()[0], sns.color_palette()[7]


# Relevance rules and the scales a histogram can draw them on


@dataclass(frozen=True)
class _Rule:
    """A relevance rule of ``FitResult.relevance(by)``: its name, the fixed rule's default
    threshold, and the range drawn on log scales (values outside are drawn at its ends)."""

    symbol: str
    name: str
    default: float
    low: float
    high: float


_RULES = {
    "snr": _Rule("SNR", "relevance |mean| / sd", SNR_THRESHOLD, RELEVANCE_FLOOR,
                 1 / RELEVANCE_FLOOR),
    "ard": _Rule("1/E[psi]", "ARD prior variance 1 / E[psi]", ARD_THRESHOLD, RELEVANCE_FLOOR**2,
                 1 / RELEVANCE_FLOOR),
}  # fmt: skip


@dataclass(frozen=True)
class _Scale:
    """The x axis of a histogram: relevance mapped by ``transform`` (monotone). ``kept_above``:
    whether kept weights (relevance above the threshold) lie above the threshold's image."""

    symbol: str
    label: str
    transform: Callable[[Any], Any]
    log_axis: bool
    kept_above: bool

    def kept_rule(self, value: float) -> str:
        """``"SNR > 1"``, ``"log alpha < 3"``: which side of ``value`` the kept weights are on."""
        return f"{self.symbol} {'>' if self.kept_above else '<'} {value:.3g}"


def _log_alpha(relevance: Any) -> Any:
    return -2.0 * np.log(relevance) + 0.0  # + 0.0: -2 log(1) is 0, not -0


_LOG_ALPHA = "log alpha = log(sd² / mean²) = -2 log(SNR)"
_SCALES = {
    ("snr", "relevance"): _Scale("SNR", _RULES["snr"].name, lambda r: r, True, True),
    ("snr", "log_alpha"): _Scale("log alpha", _LOG_ALPHA, _log_alpha, False, False),
    ("ard", "relevance"): _Scale("1/E[psi]", _RULES["ard"].name, lambda r: r, True, True),
    ("ard", "precision"): _Scale("E[psi]", "ARD precision E[psi]", lambda r: 1.0 / r, True, False),
}
_KINDS = ("relevance", "log_alpha", "precision")


def _check_threshold(threshold: Any) -> float | None:
    """``None``, or a positive finite real number (numpy scalars too) as a float."""
    if threshold is None:
        return None
    if isinstance(threshold, bool | np.bool_) or not isinstance(threshold, numbers.Real):
        raise TypeError(f"threshold must be a number or None, got {threshold!r}")
    value = float(threshold)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"threshold must be a positive finite number, got {threshold!r}")
    return value


def _check_axes(ax: Any, n: int, sites: list[str]) -> list[Axes] | None:
    """``None``, or ``n`` axes (one per site) from an ``Axes`` or a sequence/array of them."""
    if ax is None:
        return None
    axes = [ax] if isinstance(ax, Axes) else ax
    if isinstance(axes, np.ndarray):
        axes = list(axes.ravel())
    if isinstance(axes, str) or not isinstance(axes, Sequence):
        raise TypeError(f"ax must be a matplotlib Axes or a sequence of them, got {ax!r}")
    if not all(isinstance(a, Axes) for a in axes):
        raise TypeError(f"ax must hold matplotlib Axes only, got {ax!r}")
    if len(axes) != n:
        raise ValueError(
            f"ax must be {n} axes, one per weight site {sites}, got {len(axes)}"
            + ("" if n > 1 else " (pass one Axes)")
        )
    return list(axes)


class _Relevance:
    """What the relevance plots read of a ``FitResult`` or its ``to_arviz()`` ``InferenceData``:
    weight sites and shapes, relevance under rule ``by``, keep-masks and draws, each on demand.
    A ``FitResult`` is asked for ``relevance(by)`` and ``masks(by=by)`` only (no predictive)."""

    def __init__(self, data: Any, by: str) -> None:
        check_choice(by, "by", tuple(_RULES))
        self.by = by
        self.result = data if isinstance(data, FitResult) else None
        self.idata = None
        if self.result is not None:
            rules = getattr(data.posterior, "relevance_rules", ("snr",))
            if by not in rules:
                raise ValueError(
                    f"by must be one of {list(rules)} for this {data.method!r} result, got {by!r}"
                    + (" (by='ard' needs fit(method='vadam', ard=True))" if by == "ard" else "")
                )
            self.sites = list(data.weight_sites)
        else:
            _check_data(data)
            if "relevance" not in data.groups():
                raise ValueError(
                    "data has no 'relevance' group: pass a FitResult or the InferenceData of its "
                    "to_arviz()"
                )
            if by != "snr":
                raise ValueError(
                    f"by={by!r} needs a FitResult: the relevance group of to_arviz() holds the SNR"
                )
            self.idata = data
            self.sites = [
                str(name).removesuffix("_relevance")
                for name in data.relevance.data_vars
                if str(name).endswith("_relevance")
            ]
        if not self.sites:
            raise ValueError("data has no weight sites")
        self._relevance: dict[str, np.ndarray] | None = None

    @property
    def rule(self) -> _Rule:
        return _RULES[self.by]

    def shape(self, site: str) -> tuple[int, ...]:
        if self.result is not None:
            return tuple(self.result.samples[site].shape[2:])
        return tuple(self.idata.relevance[f"{site}_relevance"].shape)

    def select(self, sites: str | Sequence[str] | None) -> list[str]:
        """All weight sites, or the chosen ones (checked)."""
        if sites is None:
            return list(self.sites)
        chosen = [sites] if isinstance(sites, str) else list(sites)
        unknown = [s for s in chosen if s not in self.sites]
        if unknown or not chosen:
            raise ValueError(f"sites must name weight sites among {self.sites}, got {sites!r}")
        return chosen

    def relevance(self) -> dict[str, np.ndarray]:
        if self._relevance is None:
            if self.result is not None:
                scores = self.result.relevance(self.by)
                self._relevance = {k: v.detach().cpu().numpy() for k, v in scores.items()}
            else:
                group = self.idata.relevance
                self._relevance = {s: group[f"{s}_relevance"].values for s in self.sites}
        return self._relevance

    def kept(self, threshold: float | None) -> dict[str, np.ndarray]:
        """Keep-masks: relevance above ``threshold`` (``FitResult.masks(threshold, by)``), or
        without one the data's own (``FitResult.masks(by=by)``, the ``relevance`` group's)."""
        if threshold is not None:
            return {k: v > threshold for k, v in self.relevance().items()}
        if self.result is not None:
            masks = self.result.masks(by=self.by)
            return {k: v.detach().cpu().numpy().astype(bool) for k, v in masks.items()}
        group = self.idata.relevance
        return {s: group[f"{s}_kept"].values.astype(bool) for s in self.sites}

    def draws(self, site: str) -> np.ndarray:
        """Posterior draws ``(chain, draw, ...)`` of one weight site."""
        if self.result is not None:
            return self.result.samples[site].detach().cpu().numpy()
        return self.idata.posterior[site].values

    def sample_stats(self) -> dict[str, np.ndarray]:
        if self.result is not None:
            return {k: v.detach().cpu().numpy() for k, v in self.result.sample_stats.items()}
        if "sample_stats" not in self.idata.groups():
            return {}
        return {k: v.values for k, v in self.idata.sample_stats.data_vars.items()}

    def drawn(self, site: str) -> np.ndarray:
        """Relevance of ``site`` as drawn on log scales: clipped to the rule's range."""
        return np.clip(self.relevance()[site].astype(np.float64), self.rule.low, self.rule.high)


def _check_data(data: Any) -> None:
    if not isinstance(data, FitResult) and not callable(getattr(data, "groups", None)):
        raise TypeError(f"data must be a FitResult or InferenceData, got {type(data).__name__}")


def _check_feature_names(
    feature_names: Any, source: _Relevance, chosen: list[str]
) -> list[str] | None:
    """The names of the first weight site's inputs, one per input (column), as a list."""
    if feature_names is None:
        return None
    if isinstance(feature_names, str | bytes | Mapping):
        raise TypeError(f"feature_names must be a sequence of strings, got {feature_names!r}")
    try:
        names = list(feature_names)
    except TypeError:
        raise TypeError(
            f"feature_names must be a sequence of strings, got {feature_names!r}"
        ) from None
    if not all(isinstance(name, str) for name in names):
        raise TypeError(f"feature_names must be a sequence of strings, got {feature_names!r}")
    first = source.sites[0]
    shape = source.shape(first)
    if len(shape) < 2:
        raise ValueError(
            f"feature_names name the inputs of the first weight site {first!r}, but its shape "
            f"{shape} has no input axis"
        )
    if len(names) != shape[1]:
        raise ValueError(
            f"feature_names must have {shape[1]} names, one per input of the first weight site "
            f"{first!r} (shape {shape}), got {len(names)}"
        )
    if first not in chosen:
        raise ValueError(
            f"feature_names name the inputs of the first weight site {first!r}, which sites "
            f"leaves out ({chosen})"
        )
    return names


class _RankedWeights:
    """Every weight of the chosen sites, ordered from most to least relevant."""

    def __init__(
        self,
        source: _Relevance,
        sites: list[str],
        kept: Mapping[str, np.ndarray] | None = None,
        feature_names: list[str] | None = None,
    ) -> None:
        self.source = source
        self.feature_names = feature_names
        relevance = source.relevance()
        self.shapes = {site: relevance[site].shape for site in sites}
        scores = np.concatenate([relevance[s].ravel().astype(np.float64) for s in sites])
        order = np.argsort(-scores, kind="stable")
        self.sites = sites
        self.scores = scores[order]
        if kept is not None:
            self.kept = np.concatenate([kept[s].ravel() for s in sites])[order]
        sizes = [relevance[s].size for s in sites]
        self._site = np.repeat(np.arange(len(sites)), sizes)[order]
        self._flat = np.concatenate([np.arange(n) for n in sizes])[order]

    def __len__(self) -> int:
        return len(self.scores)

    def label(self, i: int) -> str:
        site = self.sites[self._site[i]]
        index = [str(int(j)) for j in np.unravel_index(self._flat[i], self.shapes[site])]
        if self.feature_names is not None and site == self.source.sites[0]:
            index[1] = self.feature_names[int(index[1])]
        return f"{site}[{', '.join(index)}]"

    def draws(self, rows: Sequence[int]) -> np.ndarray:
        """Posterior draws of the chosen rows: ``(chain, draw, len(rows))``."""
        columns = []
        for i in rows:
            values = self.source.draws(self.sites[self._site[i]])
            columns.append(values.reshape(*values.shape[:2], -1)[:, :, self._flat[i]])
        return np.stack(columns, axis=-1)
