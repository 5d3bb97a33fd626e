"""tinyBenchmarks' IRT, p-IRT and gp-IRT estimates of full-MMLU accuracy from tinyMMLU.

A reimplementation of ``tinyBenchmarks.evaluate(y, "mmlu")`` (Polo et al., 2024) from
its published method; see ``shared/data/tinymmlu/README.md`` and ``docs/tasks.md``.
The item parameters live in ``tinyBenchmarks.pkl``, which is not bundled: the user
passes its path (``load_params``), or opts in to ``fetch_params`` on a networked box.

For a bench (``"mmlu"``) the pickle holds, with N items and D ability dimensions:

* ``irt_parameters``: ``A`` (1, D, N) discriminations, ``B`` (1, 1, N) difficulties;
* ``seen_examples``: the anchor item indices, in tinyMMLU row order;
* ``examples_weights[scenario]``: one weight per anchor, summing to 1;
* ``scenarios_position`` / ``subscenarios_position``: item indices per scenario and
  per subject, from which the balance weights follow;
* ``optimal_lambdas[scenario]``: gp-IRT's mixing weight.

Estimates, with y the 0/1 scores scattered onto the anchors:

* IRT   = sum_i examples_weights[i] * y[anchor_i];
* theta = argmax of the Bernoulli log-likelihood of y on the anchors (BFGS from 0),
  with p_j(theta) = sigmoid(sum_d clip(A[d,j] * theta_d - B[j], -30, 30)) -- B is
  subtracted inside the sum over d, as upstream does, so unclipped it is a.theta - D*b;
* p-IRT = lam * mean_seen(w*y) + (1 - lam) * mean_unseen(w * p(theta)), lam = n_anchors/N_sce,
  w the balance weights N_sce / (n_subjects * n_subject(j));
* gp-IRT = optimal_lambda * IRT + (1 - optimal_lambda) * p-IRT.

numpy and scipy only (the scorer extra); never torch.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize

from shared.errors import TandemError

PARAMS_URL = (
    "https://raw.githubusercontent.com/felipemaiapolo/tinyBenchmarks/main/"
    "tinyBenchmarks/tinyBenchmarks.pkl"
)
PARAMS_SHA256 = "c3b6e426dfe7b100fe6d0ee960398e10a8763254bcead3be80cc6bc15abca284"
_KEYS = (
    "seen_examples",
    "examples_weights",
    "irt_parameters",
    "scenarios_position",
    "subscenarios_position",
    "optimal_lambdas",
)
# Upstream's numerical guards, kept so numbers match: log(p + eps) and clip(z, -30, 30).
_EPS = 1e-10
_CLIP = 30.0


@dataclass(frozen=True)
class IrtParams:
    """One bench's validated parameters (see the module docstring for the fields)."""

    bench: str
    A: np.ndarray  # (1, D, N)
    B: np.ndarray  # (1, 1, N)
    seen_examples: np.ndarray  # (n_scenarios * n_anchors,) int
    examples_weights: dict[str, np.ndarray]
    scenarios_position: dict[str, np.ndarray]
    subscenarios_position: dict[str, dict[str, np.ndarray]]
    optimal_lambdas: dict[str, float]

    @property
    def n_items(self) -> int:
        return int(self.A.shape[2])

    def balance_weights(self) -> np.ndarray:
        """w_j = N_sce / (n_sub * n_s): makes a plain mean equal the subject macro-average."""
        weights = np.ones(self.n_items)
        for scenario, items in self.scenarios_position.items():
            subs = self.subscenarios_position[scenario]
            for sub_items in subs.values():
                weights[sub_items] = len(items) / (len(subs) * len(sub_items))
        return weights


# --- loading and validation ---------------------------------------------------------

# A pickle can run arbitrary code when loaded; the parameter file only needs numpy
# arrays and scalars inside plain containers, so nothing else may be reconstructed.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
    *(
        ("builtins", name)
        for name in ("list", "dict", "tuple", "set", "frozenset", "int", "float", "str", "bool")
    ),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS or (
            module.startswith("numpy.dtypes") and name.endswith("DType")
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: the parameter file may hold only numpy "
            "arrays, numbers, strings, lists and dicts"
        )


def _fail(path: Path, bench: str, message: str) -> TandemError:
    return TandemError(
        f"{path}: not a valid tinyBenchmarks parameter file: [{bench!r}] {message}. "
        f"Use the original tinyBenchmarks.pkl (sha256 {PARAMS_SHA256[:12]}...) from "
        f"{PARAMS_URL}"
    )


def _int_array(value: Any, path: Path, bench: str, where: str, n_items: int | None) -> np.ndarray:
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as error:
        raise _fail(path, bench, f"{where} must be a list of item indices") from error
    if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
        raise _fail(path, bench, f"{where} must be a non-empty 1-d list of integer indices")
    if n_items is not None and (array.min() < 0 or array.max() >= n_items):
        raise _fail(path, bench, f"{where} holds indices outside 0..{n_items - 1}")
    return array.astype(np.int64)


def _mapping(value: Any, path: Path, bench: str, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(path, bench, f"{where} must be a dict, got {type(value).__name__}")
    if not value:
        raise _fail(path, bench, f"{where} is empty")
    return value


def validate_params(raw: Any, bench: str = "mmlu", path: Path | str = "<params>") -> IrtParams:
    """Check the unpickled object's structure for ``bench``; TandemError names the key."""
    path = Path(path)
    if not isinstance(raw, Mapping):
        raise _fail(path, bench, f"top level must be a dict of benches, got {type(raw).__name__}")
    if bench not in raw:
        raise _fail(path, bench, f"no such bench; the file holds {sorted(map(str, raw))}")
    entry = _mapping(raw[bench], path, bench, "the bench entry")
    missing = [key for key in _KEYS if key not in entry]
    if missing:
        raise _fail(path, bench, f"missing key(s) {missing}")

    irt = _mapping(entry["irt_parameters"], path, bench, "irt_parameters")
    for key in ("A", "B"):
        if key not in irt:
            raise _fail(path, bench, f"irt_parameters has no {key!r}")
    A = np.asarray(irt["A"], dtype=float)
    B = np.asarray(irt["B"], dtype=float)
    if A.ndim != 3 or A.shape[0] != 1 or A.shape[1] < 1 or A.shape[2] < 1:
        raise _fail(path, bench, f"irt_parameters['A'] must have shape (1, D, N), got {A.shape}")
    n_items = A.shape[2]
    if B.shape != (1, 1, n_items):
        raise _fail(
            path, bench, f"irt_parameters['B'] must have shape (1, 1, {n_items}), got {B.shape}"
        )
    if not (np.isfinite(A).all() and np.isfinite(B).all()):
        raise _fail(path, bench, "irt_parameters hold NaN or infinite values")

    scenarios_raw = _mapping(entry["scenarios_position"], path, bench, "scenarios_position")
    scenarios = {
        str(name): _int_array(items, path, bench, f"scenarios_position[{name!r}]", None)
        for name, items in scenarios_raw.items()
    }
    top = max(int(items.max()) for items in scenarios.values()) + 1
    if top != n_items:
        raise _fail(
            path,
            bench,
            f"scenarios_position covers items 0..{top - 1} but A and B describe {n_items} items",
        )

    subs_raw = _mapping(entry["subscenarios_position"], path, bench, "subscenarios_position")
    subscenarios: dict[str, dict[str, np.ndarray]] = {}
    for name in scenarios:
        if name not in subs_raw:
            raise _fail(path, bench, f"subscenarios_position has no scenario {name!r}")
        per = _mapping(subs_raw[name], path, bench, f"subscenarios_position[{name!r}]")
        subscenarios[name] = {
            str(sub): _int_array(
                items, path, bench, f"subscenarios_position[{name!r}][{sub!r}]", n_items
            )
            for sub, items in per.items()
        }

    seen = _int_array(entry["seen_examples"], path, bench, "seen_examples", n_items)
    if len(seen) % len(scenarios):
        raise _fail(
            path,
            bench,
            f"seen_examples has {len(seen)} anchors, not a multiple of the "
            f"{len(scenarios)} scenarios",
        )
    per_scenario = len(seen) // len(scenarios)

    weights_raw = _mapping(entry["examples_weights"], path, bench, "examples_weights")
    lambdas_raw = _mapping(entry["optimal_lambdas"], path, bench, "optimal_lambdas")
    weights: dict[str, np.ndarray] = {}
    lambdas: dict[str, float] = {}
    for name in scenarios:
        if name not in weights_raw:
            raise _fail(path, bench, f"examples_weights has no scenario {name!r}")
        w = np.asarray(weights_raw[name], dtype=float).reshape(-1)
        if w.shape != (per_scenario,) or not np.isfinite(w).all():
            raise _fail(
                path,
                bench,
                f"examples_weights[{name!r}] must hold {per_scenario} finite weights, "
                f"got shape {w.shape}",
            )
        if abs(w.sum() - 1.0) > 1e-6:
            raise _fail(path, bench, f"examples_weights[{name!r}] sums to {w.sum():.6f}, not 1")
        weights[name] = w
        if name not in lambdas_raw:
            raise _fail(path, bench, f"optimal_lambdas has no scenario {name!r}")
        try:
            lam = float(lambdas_raw[name])
        except (TypeError, ValueError) as error:
            raise _fail(path, bench, f"optimal_lambdas[{name!r}] is not a number") from error
        if not 0.0 <= lam <= 1.0:
            raise _fail(path, bench, f"optimal_lambdas[{name!r}] = {lam} is outside [0, 1]")
        lambdas[name] = lam

    return IrtParams(
        bench=bench,
        A=A,
        B=B,
        seen_examples=seen,
        examples_weights=weights,
        scenarios_position=scenarios,
        subscenarios_position=subscenarios,
        optimal_lambdas=lambdas,
    )


def load_params(path: str | Path, bench: str = "mmlu") -> IrtParams:
    """Read and validate ``tinyBenchmarks.pkl`` (or a file of the same structure)."""
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except OSError as error:
        raise TandemError(
            f"cannot read the IRT parameter file {path}: {error.strerror}; download "
            f"tinyBenchmarks.pkl from {PARAMS_URL} and pass its path"
        ) from error
    try:
        raw = _SafeUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise TandemError(
            f"{path}: cannot unpickle the IRT parameter file ({error}); expected "
            f"tinyBenchmarks.pkl from {PARAMS_URL}"
        ) from error
    return validate_params(raw, bench, path)


def fetch_params(dest: str | Path, url: str = PARAMS_URL, timeout: float = 60.0) -> Path:
    """Download tinyBenchmarks.pkl to ``dest`` (explicit opt-in only; never called implicitly).

    The bytes must match the published sha256; written to a temp file, then renamed.
    """
    import urllib.error
    import urllib.request

    dest = Path(dest).expanduser()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = response.read()
    except (urllib.error.URLError, OSError) as error:
        raise TandemError(
            f"could not download the IRT parameters from {url} ({error}); download "
            "tinyBenchmarks.pkl by other means and pass its path instead"
        ) from error
    digest = hashlib.sha256(data).hexdigest()
    if digest != PARAMS_SHA256:
        raise TandemError(
            f"downloaded {url} has sha256 {digest}, expected {PARAMS_SHA256}; not saved"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(dest)
    return dest


# --- estimation ---------------------------------------------------------------------


def item_curve(theta: np.ndarray, A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """P(correct) per item: sigmoid(sum_d clip(A[:, d, j] * theta_d - B[:, :, j], +-30))."""
    z = np.clip(A * theta.reshape(1, -1, 1) - B, -_CLIP, _CLIP).sum(axis=1)
    return 1.0 / (1.0 + np.exp(-z))


def fit_theta(y_seen: np.ndarray, A_seen: np.ndarray, B_seen: np.ndarray) -> np.ndarray:
    """Maximum-likelihood ability on the anchors (BFGS from theta = 0, as upstream)."""

    def negative_log_likelihood(theta: np.ndarray) -> float:
        p = item_curve(theta, A_seen, B_seen)[0]
        return -float(np.sum(y_seen * np.log(p + _EPS) + (1 - y_seen) * np.log(1 - p + _EPS)))

    return minimize(negative_log_likelihood, np.zeros(A_seen.shape[1]), method="BFGS").x


def estimate(params: IrtParams, correct: Sequence[float], scenario: str = "mmlu") -> dict:
    """IRT, p-IRT and gp-IRT for one scenario from per-anchor scores in tinyMMLU order.

    ``correct[i]`` is the score (0/1, or a fraction) of anchor i, i.e. tinyMMLU doc_id i.
    Returns ``{"irt", "pirt", "gpirt"}`` (floats).
    """
    if scenario not in params.scenarios_position:
        raise TandemError(
            f"IRT scenario {scenario!r} is not in the parameter file; it holds "
            f"{sorted(params.scenarios_position)}"
        )
    names = list(params.scenarios_position)
    per_scenario = len(params.seen_examples) // len(names)
    y_input = np.asarray(correct, dtype=float).reshape(-1)
    # A bench fitted on one scenario (mmlu) uses all anchors; a multi-scenario bench
    # (the Open LLM Leaderboard one) gets this scenario's slice, as upstream does.
    if len(names) == 1:
        seen = params.seen_examples
    else:
        start = names.index(scenario) * per_scenario
        seen = params.seen_examples[start : start + per_scenario]
    if y_input.shape != (len(seen),):
        raise TandemError(
            f"IRT needs {len(seen)} scores (one per anchor, in tinyMMLU doc order), got "
            f"{y_input.size}; the estimates are defined only on the full tiny set, so run "
            "tinymmlu without a limit"
        )
    if not np.isfinite(y_input).all() or (y_input < 0).any() or (y_input > 1).any():
        raise TandemError("IRT scores must be numbers in [0, 1]")

    y = np.zeros(params.n_items)
    y[seen] = y_input
    theta = fit_theta(y[seen], params.A[:, :, seen], params.B[:, :, seen])

    items = params.scenarios_position[scenario]
    in_scenario = np.zeros(params.n_items, dtype=bool)
    in_scenario[items] = True
    is_seen = np.zeros(params.n_items, dtype=bool)
    is_seen[seen] = True
    seen_sce = [j for j in seen if in_scenario[j]]
    unseen_sce = np.flatnonzero(in_scenario & ~is_seen)

    balance = params.balance_weights()
    irt = float(np.sum(params.examples_weights[scenario] * y[seen_sce]))
    data_part = float(np.mean((balance * y)[seen_sce]))
    if unseen_sce.size:
        curve = item_curve(theta, params.A, params.B)[0]
        model_part = float(np.mean((balance * curve)[unseen_sce]))
    else:  # every item was an anchor: nothing left to predict
        model_part = 0.0
    lam_p = per_scenario / len(items)
    pirt = lam_p * data_part + (1 - lam_p) * model_part
    lam = params.optimal_lambdas[scenario]
    gpirt = lam * irt + (1 - lam) * pirt
    return {"irt": irt, "pirt": pirt, "gpirt": gpirt}


def summarize(correct: Sequence[float], params_path: str | Path | None) -> dict[str, Any]:
    """tinyMMLU's summary entry: accuracy always, IRT estimates when they can be computed.

    Without a parameter file (or with too few scores) ``irt_absent`` says why instead.
    """
    scores = [float(value) for value in correct]
    summary: dict[str, Any] = {"acc": sum(scores) / len(scores) if scores else 0.0}
    if params_path is None:
        summary["irt_absent"] = (
            "no tinyBenchmarks.pkl given: IRT, p-IRT and gp-IRT need its item parameters; "
            "pass its path (or opt in to fetching it) to get them"
        )
        return summary
    params = load_params(params_path)
    if len(scores) != len(params.seen_examples):
        summary["irt_absent"] = (
            f"IRT needs all {len(params.seen_examples)} tinyMMLU items, got {len(scores)} "
            "(a limit was set)"
        )
        return summary
    estimates = estimate(params, scores)
    summary.update({key: estimates[key] for key in ("irt", "pirt", "gpirt")})
    return summary
